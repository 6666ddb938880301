"""`evaluate_model.py`: held-out loss / perplexity / bits per byte, then scored generations.

Also what both evaluators share: the model from the one loader, bad input as one line, and the
reports (the readable console summary and the JSON document, written atomically).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from src.atomic_files import atomic_write_text
from src.data.cache import CacheError, DEFAULT_CACHE_DIR
from src.data.sources import DataSourceError
from src.data.tokenizer import TokenizerError
from src.evaluation import EvaluationError
from src.evaluation.heldout import DEFAULT_VALIDATION_SOURCE, HeldOutResult, evaluate_heldout, evaluate_stories
from src.evaluation.judge import JudgeOptions, judge_completions, judge_lines, prepare_judge
from src.evaluation.stories import GenerationSummary, generate_and_score, load_prompts, summarize, warm_up
from src.generation.engine import Generator
from src.generation.presets import DEFAULT_PRESET, PRESETS
from src.model.checkpoint import CheckpointError, LoadedModel, load_for_inference


# ---------------------------------------------------------------------------------------------
# What both evaluators share: the model from the one loader, and bad input as one line.

# Bad input of these kinds is reported as one line on stderr, without a traceback.
# OSError covers unwritable output paths.
INPUT_ERRORS = (CheckpointError, DataSourceError, CacheError, TokenizerError, EvaluationError, OSError)


def load_for_evaluation(checkpoint: str | None, device_name: str, precision: str = "auto") -> LoadedModel:
    """The checkpoint named by the flag, $CHECKPOINT_PATH, the best one in checkpoints/ or the demo."""
    try:
        return load_for_inference(checkpoint, device_name, precision)
    except CheckpointError:
        raise
    except ValueError as exc:  # a device or precision this machine does not have
        raise EvaluationError(str(exc)) from None


def run_cli(task: Callable[[], object], prog: str) -> int:
    """Run `task`; exit status 0, or 2 with `prog: error: ...` on stderr for bad input."""
    try:
        task()
    except INPUT_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


# ---------------------------------------------------------------------------------------------
# Reports: the readable console summary and the JSON document, written atomically.

def write_json(path: str | Path, document: Any) -> Path:
    """Write `document` as indented UTF-8 JSON; a crash never leaves a half-written file."""
    path = Path(path)
    atomic_write_text(path, json.dumps(document, ensure_ascii=False, indent=2, allow_nan=False, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def heldout_lines(result: HeldOutResult) -> list[str]:
    scope = f"first {result.windows} windows" if result.capped else f"all {result.windows} windows"
    return [
        f"Held-out text: {result.source} ({scope} of {result.seq_len} tokens, "
        f"{result.predicted_tokens:,} tokens predicted, {result.n_bytes:,} bytes)",
        f"  loss            {result.loss:.4f} nats/token",
        f"  perplexity      {result.perplexity:.2f}",
        f"  bits per byte   {result.bits_per_byte:.4f}",
    ]


def generation_lines(summary: GenerationSummary) -> list[str]:
    s = summary
    lines = [
        f"Generation: {s.samples} samples",
        f"  articles        {fmt(s.articles_per_sample, 2)} per sample,"
        f" {fmt(s.articles_per_100_words, 1)} per 100 words,"
        f" {100 * s.article_presence:.0f}% of samples have one (continuation only)",
        f"  grammar         {fmt(s.grammar_raw, 2)}/10 raw, {fmt(s.grammar_postprocessed, 2)}/10 post-processed",
    ]
    for name, raw in s.grammar_checks_raw.items():
        post = s.grammar_checks_postprocessed[name]
        lines.append(f"    {name:<22} raw {fmt(raw, 2):>5}   post-processed {fmt(post, 2):>5}")
    lines += [
        f"  repetition      unique-word ratio {fmt(s.unique_word_ratio)}, distinct-1 {fmt(s.distinct_1)},"
        f" distinct-2 {fmt(s.distinct_2)}, longest repeated n-gram {fmt(s.longest_repeated_ngram_mean, 1)}"
        f" words (max {s.longest_repeated_ngram_max})",
        f"  length          {100 * s.eos_rate:.0f}% ended with EOS, {fmt(s.mean_tokens, 1)} tokens /"
        f" {fmt(s.mean_words, 1)} words on average, {fmt(s.tokens_per_s, 1)} tokens/s",
    ]
    return lines


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
