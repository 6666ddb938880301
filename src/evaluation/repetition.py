"""Repetition: how much of a story the model copied from itself.

Small models fall into loops ("the cat sat. the cat sat. ..."). A loop lowers the unique-word
ratio and distinct-n, and lengthens the longest repeated n-gram.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from src.evaluation.text import words


@dataclass(frozen=True)
class RepetitionScores:
    unique_word_ratio: float  # distinct words / words (higher is better)
    distinct_2: float  # distinct word bigrams / bigrams (higher is better)
    longest_repeated_ngram: int  # words in the longest n-gram seen twice or more (lower is better)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over the given texts (0 when there are none).

    Pooled over many samples, it also drops when different seeds tell the same story.
    """
    pooled = [gram for tokens in token_lists for gram in ngrams(tokens, n)]
    return len(set(pooled)) / len(pooled) if pooled else 0.0


def longest_repeated_ngram(tokens: Sequence[str]) -> int:
    """Length of the longest word n-gram occurring at least twice (occurrences may overlap).

    If an n-gram repeats, so do its (n-1)-gram prefixes, so we grow n until nothing repeats.
    """
    length = 0
    for n in range(1, len(tokens)):
        grams = ngrams(tokens, n)
        if len(set(grams)) == len(grams):
            break
        length = n
    return length


def score_repetition(continuation: str) -> RepetitionScores:
    """Repetition scores of one continuation; an empty one scores 0 ratios (nothing written)."""
    tokens = words(continuation)
    return RepetitionScores(
        unique_word_ratio=len(set(tokens)) / len(tokens) if tokens else 0.0,
        distinct_2=distinct_n([tokens], 2),
        longest_repeated_ngram=longest_repeated_ngram(tokens),
    )
