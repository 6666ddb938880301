"""`evaluate_model_enhanced.py`: every sampling preset on the same prompts and seeds, the best one
by one documented rule, and the reports: a console table, JSON, Markdown and a PNG chart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from src.atomic_files import atomic_output, atomic_write_text
from src.evaluation import EvaluationError
from src.evaluation.evaluate import fmt, load_for_evaluation, run_cli, write_json
from src.evaluation.judge import (GRADES, RERUN_NOTE, JudgeOptions, calibration_lines, judge_completions,
                                  prepare_judge, unanswered)
from src.evaluation.metrics import CHECKS
from src.evaluation.stories import (
    GenerationSummary,
    SampleScores,
    generate_and_score,
    load_prompts,
    summarize,
    warm_up,
)
from src.generation.engine import Generator
from src.generation.presets import PRESETS


# ---------------------------------------------------------------------------------------------
# Which preset is best: one documented rule over scores of the raw model output.
# quality = mean( grammar_raw / 10, article_presence, unique_word_ratio, distinct_2, eos_rate )
#
# Each term lies in [0, 1] and rises when the stories get better: grammatical as written (not
# after clean-up), using articles, not repeating themselves within a story (unique-word ratio)
# or across stories (pooled distinct-2), and ending on their own (EOS) before the token limit.
# The preset with the highest quality wins; a tie goes to the preset listed first.

QUALITY_RULE = (
    "quality = mean(grammar_raw / 10, article_presence, unique_word_ratio, distinct_2, eos_rate);"
    " highest wins, ties go to the preset listed first"
)


def quality(summary: GenerationSummary) -> float:
    terms = (
        summary.grammar_raw / 10.0,
        summary.article_presence,
        summary.unique_word_ratio,
        summary.distinct_2,
        summary.eos_rate,
    )
    return sum(terms) / len(terms)


def best_preset(summaries: Mapping[str, GenerationSummary]) -> str:
    """The name with the highest quality (first listed on a tie)."""
    if not summaries:
        raise ValueError("no presets to choose from")
    names = list(summaries)
    return max(names, key=lambda name: (quality(summaries[name]), -names.index(name)))


# ---------------------------------------------------------------------------------------------
# The preset comparison as a console table and as a Markdown report.

COLUMNS: dict[str, Callable[[GenerationSummary], str]] = {
    "quality": lambda s: fmt(quality(s)),
    "grammar raw": lambda s: fmt(s.grammar_raw, 2),
    "grammar post": lambda s: fmt(s.grammar_postprocessed, 2),
    "articles>=1": lambda s: f"{100 * s.article_presence:.0f}%",
    "art/100w": lambda s: fmt(s.articles_per_100_words, 1),
    "unique": lambda s: fmt(s.unique_word_ratio),
    "dist-1": lambda s: fmt(s.distinct_1),
    "dist-2": lambda s: fmt(s.distinct_2),
    "rep n-gram": lambda s: fmt(s.longest_repeated_ngram_mean, 1),
    "EOS": lambda s: f"{100 * s.eos_rate:.0f}%",
    "tokens": lambda s: fmt(s.mean_tokens, 1),
    "tok/s": lambda s: fmt(s.tokens_per_s, 1),
}


def table_rows(summaries: Mapping[str, GenerationSummary]) -> list[list[str]]:
    header = ["preset", *COLUMNS]
    return [header] + [[name, *(cell(summary) for cell in COLUMNS.values())] for name, summary in summaries.items()]


def text_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    escape = lambda cell: cell.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
    return "\n".join(lines)


def grammar_check_rows(summaries: Mapping[str, GenerationSummary]) -> list[list[str]]:
    """Each grammar check, raw vs post-processed, per preset."""
    header = ["check"] + [f"{name} {kind}" for name in summaries for kind in ("raw", "post")]
    rows = [header]
    for check in CHECKS:
        row = [check]
        for summary in summaries.values():
            row += [fmt(summary.grammar_checks_raw[check], 2), fmt(summary.grammar_checks_postprocessed[check], 2)]
        rows.append(row)
    return rows


def markdown_report(
    summaries: Mapping[str, GenerationSummary],
    samples: Mapping[str, Sequence[SampleScores]],
    best: str,
    settings: Mapping[str, Any],
    chart_name: str,
) -> str:
    """The whole comparison as Markdown: table, rule, chart, grammar checks, example stories."""
    lines = [
        "# Preset comparison",
        "",
        f"Checkpoint `{settings['checkpoint']}`; {settings['prompts']} prompts x {settings['num_samples']} seeded "
        f"samples per preset (seeds {settings['seed']}..{settings['seed'] + settings['num_samples'] - 1}), "
        f"at most {settings['max_new_tokens']} new tokens.",
        "",
        f"**Best preset: {best}** (quality {quality(summaries[best]):.3f}). Rule: {QUALITY_RULE}.",
        "",
        markdown_table(table_rows(summaries)),
        "",
        "Articles and repetition count the generated continuation only; grammar is out of 10, scored on the raw "
        "model output and separately on the post-processed text. `rep n-gram` is the mean length in words of the "
        "longest repeated n-gram (lower is better).",
        "",
        f"![preset comparison]({chart_name})",
        "",
        "## Grammar checks, raw vs post-processed",
        "",
        markdown_table(grammar_check_rows(summaries)),
        "",
        "## Example stories, raw vs post-processed",
    ]
    for name, preset_samples in samples.items():
        lines += ["", f"### {name}", ""]
        rows = [["seed", "raw (grammar)", "post-processed (grammar)", "finish"]]
        for sample in [s for s in preset_samples if s.seed == settings["seed"]]:  # first sample of each prompt
            rows.append([
                str(sample.seed),
                f"{sample.story} ({sample.grammar_raw:.1f})",
                f"{sample.postprocessed} ({sample.grammar_postprocessed:.1f})",
                sample.finish_reason,
            ])
        lines.append(markdown_table(rows))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# A PNG bar chart comparing presets on the main [0, 1] scores (matplotlib, no display needed).

CHART_SCORES = {
    "grammar raw /10": lambda s: s.grammar_raw / 10,
    "grammar post /10": lambda s: s.grammar_postprocessed / 10,
    "article presence": lambda s: s.article_presence,
    "unique-word ratio": lambda s: s.unique_word_ratio,
    "distinct-2": lambda s: s.distinct_2,
    "EOS share": lambda s: s.eos_rate,
    "quality": quality,
}


def plot_comparison(summaries: Mapping[str, GenerationSummary], path: str | Path, title: str) -> Path:
    """Grouped bars: one group per score, one bar per preset; written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works on servers without a display
    import matplotlib.pyplot as plt

    names = list(summaries)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for i, name in enumerate(names):
        values = [score(summaries[name]) for score in CHART_SCORES.values()]
        positions = [x + (i - (len(names) - 1) / 2) * width for x in range(len(CHART_SCORES))]
        ax.bar(positions, values, width, label=name)
    ax.set_xticks(range(len(CHART_SCORES)), list(CHART_SCORES), rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(title)
    ax.legend(title="preset")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


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
    judged = judge_presets(generator, judge, splits, options) if options.judge is not None else {}

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


def judge_presets(generator, judge, splits, options: CompareOptions) -> dict[str, dict]:
    """Each preset's completions graded by the judge; calibration beside the first preset's."""
    judged = {}
    for index, name in enumerate(options.presets):
        params = PRESETS[name].replace(max_new_tokens=options.max_new_tokens)
        judged[name] = judge_completions(generator, judge, splits, params, options.seed,
                                         options.judge.calibrate and index == 0)
    print(text_table(judge_rows(judged)))
    if any(unanswered(summary) for summary in judged.values()):
        print(f"Conversations with parse failures or errors: {RERUN_NOTE}")
    calibrated = judged[options.presets[0]].get("calibration")
    if calibrated:
        print(f"Judge calibration, beside preset {options.presets[0]!r}:")
        print("\n".join(calibration_lines(calibrated)))
    return judged


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
