"""Reports: the readable console summary and the JSON document, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from src.atomic_files import atomic_write_text
from src.evaluation.heldout import HeldOutResult
from src.evaluation.summary import GenerationSummary


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
