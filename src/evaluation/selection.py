"""Which preset is best: one documented rule over scores of the raw model output.

    quality = mean( grammar_raw / 10, article_presence, unique_word_ratio, distinct_2, eos_rate )

Each term lies in [0, 1] and rises when the stories get better: grammatical as written (not
after clean-up), using articles, not repeating themselves within a story (unique-word ratio)
or across stories (pooled distinct-2), and ending on their own (EOS) before the token limit.
The preset with the highest quality wins; a tie goes to the preset listed first.
"""

from __future__ import annotations

from collections.abc import Mapping

from src.evaluation.summary import GenerationSummary

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
