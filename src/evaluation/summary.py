"""One set of scored samples reduced to the numbers a report shows.

Means are over samples; article density and distinct-n pool all samples' words (so long and
short stories weigh by their length, and identical stories across seeds lower distinct-n);
tokens/s is total tokens over total generation time. Pooled distinct-n falls as the sample count
grows, so compare it only between runs with the same prompts and number of samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from statistics import mean

from src.evaluation.grammar import CHECKS
from src.evaluation.repetition import distinct_n
from src.evaluation.samples import SampleScores
from src.evaluation.text import words


@dataclass(frozen=True)
class GenerationSummary:
    samples: int
    # articles, in the continuation only
    articles_per_sample: float
    articles_per_100_words: float
    article_presence: float  # share of samples with at least one a / an / the
    # grammar, out of 10, raw model output vs post-processed text
    grammar_raw: float
    grammar_postprocessed: float
    grammar_checks_raw: dict[str, float | None]  # mean of each check where it applied
    grammar_checks_postprocessed: dict[str, float | None]
    # repetition
    unique_word_ratio: float  # mean per sample
    distinct_1: float  # pooled over all samples
    distinct_2: float  # pooled over all samples
    longest_repeated_ngram_mean: float
    longest_repeated_ngram_max: int
    # length and speed
    eos_rate: float  # share of samples that ended with EOS before the token limit
    mean_tokens: float
    mean_words: float
    tokens_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def share(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def _check_means(per_sample: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    means = {}
    for name in CHECKS:
        values = [checks[name] for checks in per_sample if checks.get(name) is not None]
        means[name] = mean(values) if values else None
    return means


def summarize(samples: Sequence[SampleScores]) -> GenerationSummary:
    if not samples:
        raise ValueError("no samples to summarise")
    token_lists = [words(s.continuation) for s in samples]
    total_words = sum(s.words for s in samples)
    total_seconds = sum(s.seconds for s in samples)
    return GenerationSummary(
        samples=len(samples),
        articles_per_sample=mean(s.articles for s in samples),
        articles_per_100_words=100.0 * sum(s.articles for s in samples) / total_words if total_words else 0.0,
        article_presence=share(s.articles > 0 for s in samples),
        grammar_raw=mean(s.grammar_raw for s in samples),
        grammar_postprocessed=mean(s.grammar_postprocessed for s in samples),
        grammar_checks_raw=_check_means([s.grammar_checks_raw for s in samples]),
        grammar_checks_postprocessed=_check_means([s.grammar_checks_postprocessed for s in samples]),
        unique_word_ratio=mean(s.unique_word_ratio for s in samples),
        distinct_1=distinct_n(token_lists, 1),
        distinct_2=distinct_n(token_lists, 2),
        longest_repeated_ngram_mean=mean(s.longest_repeated_ngram for s in samples),
        longest_repeated_ngram_max=max(s.longest_repeated_ngram for s in samples),
        eos_rate=share(s.finish_reason == "eos" for s in samples),
        mean_tokens=mean(s.tokens for s in samples),
        mean_words=total_words / len(samples),
        tokens_per_s=sum(s.tokens for s in samples) / total_seconds if total_seconds > 0 else 0.0,
    )
