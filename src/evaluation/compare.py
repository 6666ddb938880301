"""`evaluate_model_enhanced.py`: the presets compared on the same prompts and seeds.

Writes `preset_comparison.json` (every number and every sample), `preset_comparison.md` and
`preset_comparison.png` to the output folder, prints the table, and names the best preset by
the rule in `src.evaluation.selection`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from src.atomic_files import atomic_write_text
from src.evaluation.chart import plot_comparison
from src.evaluation.comparison_report import markdown_report, markdown_table, table_rows, text_table
from src.evaluation.errors import EvaluationError
from src.evaluation.judge import GRADES, JudgeOptions, calibration_lines, judge_completions, prepare_judge
from src.evaluation.prompts import load_prompts
from src.evaluation.report import write_json
from src.evaluation.runner import load_for_evaluation, run_cli
from src.evaluation.samples import generate_and_score, warm_up
from src.evaluation.selection import QUALITY_RULE, best_preset, quality
from src.evaluation.summary import summarize
from src.generation.engine import Generator
from src.generation.presets import PRESETS

DEFAULT_OUT_DIR = "outputs/eval"
REPORT_NAME = "preset_comparison"


@dataclass(frozen=True)
class CompareOptions:
    checkpoint: str | None = None
    prompts_file: str | None = None
    presets: tuple[str, ...] = field(default_factory=lambda: tuple(PRESETS))
    num_samples: int = 3  # per prompt and preset
    seed: int = 42
    max_new_tokens: int = 200
    device: str = "auto"
    precision: str = "auto"  # weight format, see src.device.inference_precision
    out_dir: str = DEFAULT_OUT_DIR
    judge: JudgeOptions | None = None  # also grade each preset's completions with an LLM judge
    data: str | None = None  # text the judge's story beginnings are cut from (else --prompts)

    def check(self) -> None:
        for name in ("num_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise EvaluationError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        unknown = [name for name in self.presets if name not in PRESETS]
        if unknown or not self.presets:
            named = ", ".join(unknown) or "(none given)"
            raise EvaluationError(f"unknown preset(s) {named}; choose from {', '.join(PRESETS)}")


def compare_presets(options: CompareOptions) -> dict[str, Any]:
    """Generate and score every preset on the same prompts and seeds; write the three reports."""
    options.check()
    prompts = load_prompts(options.prompts_file)
    if options.judge is not None:  # a dead judge ends the run here, before anything is loaded
        judge, splits = prepare_judge(options.judge, options.data, options.prompts_file, options.seed)
    out_dir = Path(options.out_dir)  # created on the first write, so bad input leaves nothing behind
    loaded = load_for_evaluation(options.checkpoint, options.device, options.precision)
    generator = Generator.from_loaded(loaded)
    warm_up(generator, prompts[0])
    started = time.perf_counter()
    print(f"Model: {loaded.path}; {len(prompts)} prompts x {options.num_samples} samples"
          f" x {len(options.presets)} presets")

    samples = {
        name: generate_and_score(generator, prompts, name, options.num_samples, options.seed, options.max_new_tokens)
        for name in options.presets
    }
    summaries = {name: summarize(preset_samples) for name, preset_samples in samples.items()}
    best = best_preset(summaries)

    print(text_table(table_rows(summaries)))
    print(f"Best preset: {best} ({QUALITY_RULE})")
    judged = {}
    if options.judge is not None:
        for index, name in enumerate(options.presets):  # calibration beside the first preset's completions
            params = PRESETS[name].replace(max_new_tokens=options.max_new_tokens)
            judged[name] = judge_completions(generator, judge, splits, params, options.seed,
                                             options.judge.calibrate and index == 0)
        print(text_table(judge_rows(judged)))
        calibrated = judged[options.presets[0]].get("calibration")
        if calibrated:
            print(f"Judge calibration, beside preset {options.presets[0]!r}:")
            print("\n".join(calibration_lines(calibrated)))

    settings = {
        "checkpoint": str(loaded.path),
        "prompts": len(prompts),
        "num_samples": options.num_samples,
        "seed": options.seed,
        "max_new_tokens": options.max_new_tokens,
    }
    document = {
        **settings,
        "prompt_texts": prompts,
        "checkpoint_metrics": loaded.metrics,
        "best_preset": best,
        "selection_rule": QUALITY_RULE,
        "presets": {
            name: {
                "sampling": asdict(PRESETS[name].replace(max_new_tokens=options.max_new_tokens)),
                "quality": quality(summary),
                "summary": summary.to_dict(),
                "judge": judged.get(name),
            }
            for name, summary in summaries.items()
        },
        "samples": [asdict(sample) for preset_samples in samples.values() for sample in preset_samples],
        "seconds": time.perf_counter() - started,
    }
    json_path = write_json(out_dir / f"{REPORT_NAME}.json", document)
    chart_path = plot_comparison(summaries, out_dir / f"{REPORT_NAME}.png", f"Presets on {loaded.name}")
    markdown_path = out_dir / f"{REPORT_NAME}.md"
    report = markdown_report(summaries, samples, best, settings, chart_path.name)
    if judged:
        report += f"\n## Judge: {options.judge.model}\n\n" + markdown_table(judge_rows(judged)) + "\n"
    atomic_write_text(markdown_path, report)
    print(f"Wrote {json_path}, {markdown_path}, {chart_path}")
    return document


def judge_rows(judged: dict[str, dict]) -> list[list[str]]:
    """Each preset's mean judge grades (1-10), stories graded and replies that could not be read."""
    rows = [["preset", *GRADES, "graded", "parse failures", "errors"]]
    for name, summary in judged.items():
        grades = [f"{summary[g]:.2f}" if summary[g] is not None else "-" for g in GRADES]
        errors = ", ".join(f"{reason} {count}" for reason, count in summary["errors"].items()) or "0"
        rows.append([name, *grades, str(summary["n"]), str(summary["parse_failures"]), errors])
    return rows


def run(options: CompareOptions, prog: str = "evaluate_model_enhanced.py") -> int:
    """`compare_presets` for the command line: exit status 0, or 2 with one line on stderr for bad input."""
    return run_cli(lambda: compare_presets(options), prog)
