"""`evaluate_model.py`: held-out loss / perplexity / bits per byte, then scored generations."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from src.data.cache import DEFAULT_CACHE_DIR
from src.evaluation.errors import EvaluationError
from src.evaluation.heldout import DEFAULT_VALIDATION_SOURCE, evaluate_heldout, evaluate_stories
from src.evaluation.judge import JudgeOptions, judge_completions, judge_lines, prepare_judge
from src.evaluation.prompts import load_prompts
from src.evaluation.report import generation_lines, heldout_lines, write_json
from src.evaluation.runner import load_for_evaluation, run_cli
from src.evaluation.samples import generate_and_score, warm_up
from src.evaluation.summary import summarize
from src.generation.engine import Generator
from src.generation.presets import DEFAULT_PRESET, PRESETS


@dataclass(frozen=True)
class EvaluateOptions:
    checkpoint: str | None = None  # None: $CHECKPOINT_PATH, best checkpoint, then the demo model
    data: str | None = DEFAULT_VALIDATION_SOURCE  # None skips the held-out part
    cache_dir: str = DEFAULT_CACHE_DIR
    max_windows: int | None = None  # None scores every window
    per_story: bool = False  # score each story on its own after the story-start token (lm-eval's rolling)
    batch_size: int = 8
    prompts_file: str | None = None  # None: the five built-in story openings
    preset: str = DEFAULT_PRESET
    num_samples: int = 3  # per prompt
    seed: int = 42
    max_new_tokens: int = 200
    device: str = "auto"
    precision: str = "auto"  # weight format, see src.device.inference_precision
    json_path: str | None = None
    judge: JudgeOptions | None = None  # grade completions with an LLM judge (the TinyStories paper's)

    def check(self) -> None:
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise EvaluationError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_windows is not None and self.max_windows < 1:
            raise EvaluationError(f"max-windows must be at least 1, got {self.max_windows}")
        if self.preset not in PRESETS:
            raise EvaluationError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")


def evaluate(options: EvaluateOptions) -> dict[str, Any]:
    """Run the evaluation, print the summary, write the JSON if asked; return the document."""
    options.check()
    prompts = load_prompts(options.prompts_file)  # fail on a bad prompts file before any work
    if options.judge is not None:  # a dead judge ends the run here, before anything is loaded
        judge, splits = prepare_judge(options.judge, options.data, options.prompts_file, options.seed)
    loaded = load_for_evaluation(options.checkpoint, options.device, options.precision)
    print(f"Model: {loaded.path} ({loaded.model.num_parameters():,} parameters, context {loaded.config.max_seq_len})")
    started = time.perf_counter()

    heldout = None
    if options.data is not None and options.per_story:
        heldout = evaluate_stories(loaded.model, loaded.tokenizer, options.data, loaded.story_start_id)
        print("\n".join(heldout_lines(heldout)))
    elif options.data is not None:
        heldout = evaluate_heldout(
            loaded.model, loaded.tokenizer, options.data, options.cache_dir, options.max_windows, options.batch_size,
            story_start_id=loaded.story_start_id,
        )
        print("\n".join(heldout_lines(heldout)))

    generator = Generator.from_loaded(loaded)
    warm_up(generator, prompts[0])
    samples = generate_and_score(
        generator, prompts, options.preset, options.num_samples, options.seed, options.max_new_tokens
    )
    summary = summarize(samples)
    last_seed = options.seed + options.num_samples - 1
    print(f"Preset {options.preset!r}, {len(prompts)} prompts x {options.num_samples} samples, "
          f"seeds {options.seed}..{last_seed}, at most {options.max_new_tokens} new tokens")
    print("\n".join(generation_lines(summary)))

    judged = None
    if options.judge is not None:
        params = PRESETS[DEFAULT_PRESET].replace(max_new_tokens=options.max_new_tokens)
        judged = judge_completions(generator, judge, splits, params, options.seed, options.judge.calibrate)
        print("\n".join(judge_lines(judged)))

    document = {
        "checkpoint": str(loaded.path),
        "checkpoint_metrics": loaded.metrics,
        "options": asdict(options),
        "sampling": asdict(PRESETS[options.preset].replace(max_new_tokens=options.max_new_tokens)),
        "heldout": heldout.to_dict() if heldout else None,
        "generation": summary.to_dict(),
        "samples": [asdict(sample) for sample in samples],
        "judge": judged,
        "seconds": time.perf_counter() - started,
    }
    if options.json_path:
        print(f"Wrote {write_json(options.json_path, document)}")
    return document


def run(options: EvaluateOptions, prog: str = "evaluate_model.py") -> int:
    """`evaluate` for the command line: exit status 0, or 2 with one line on stderr for bad input."""
    return run_cli(lambda: evaluate(options), prog)
