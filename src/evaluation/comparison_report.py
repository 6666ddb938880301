"""The preset comparison as a console table and as a Markdown report."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from src.evaluation.grammar import CHECKS
from src.evaluation.report import fmt
from src.evaluation.samples import SampleScores
from src.evaluation.selection import QUALITY_RULE, quality
from src.evaluation.summary import GenerationSummary

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
