"""Stories to score: the openings the evaluators generate from, seeded samples generated with the
one generation engine and scored, and one set of samples reduced to the numbers a report shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

from src.evaluation import EvaluationError
from src.evaluation.metrics import CHECKS, count_articles, distinct_n, score_grammar, score_repetition, words
from src.generation.engine import GenerationResult, Generator
from src.generation.postprocess import postprocess
from src.generation.presets import PRESETS


# ---------------------------------------------------------------------------------------------
# The story openings the evaluators generate from.

# Five story openings, the same every run, so scores stay comparable between models and runs.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Once upon a time there was",
    "One day, a little girl named Lily",
    "In the garden, a small bird",
    "A big dog wanted to play with",
    "The happy cat found",
)


def load_prompts(path: str | Path | None) -> list[str]:
    """One prompt per non-empty line of a UTF-8 file (lines starting with # are comments);
    the default prompts when `path` is None."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvaluationError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read prompts file {path}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EvaluationError(f"prompts file {path} holds no prompts (one per line expected)")
    return prompts


# ---------------------------------------------------------------------------------------------
# Generate seeded samples with the one generation engine and score each one.
# Sample i of every prompt uses seed `seed + i`, so a run is reproducible and two presets are
# compared on the same seeds. Articles and repetition are counted in the raw continuation only;
# grammar is scored twice, on the raw story (prompt + continuation) and on its post-processed
# form, so the clean-up can never pass for model quality.

@dataclass(frozen=True)
class SampleScores:
    """One generated story and every per-sample score (flat, so it serialises as is)."""

    preset: str
    prompt: str
    seed: int
    continuation: str  # raw model output after the prompt
    postprocessed: str  # postprocess(prompt + continuation)
    finish_reason: str  # "eos" or "length"
    tokens: int
    seconds: float
    words: int
    articles: int
    articles_per_100_words: float
    grammar_raw: float  # out of 10
    grammar_postprocessed: float  # out of 10
    grammar_checks_raw: dict[str, float | None]
    grammar_checks_postprocessed: dict[str, float | None]
    unique_word_ratio: float
    distinct_2: float
    longest_repeated_ngram: int

    @property
    def story(self) -> str:
        return self.prompt + self.continuation


def prompt_offset(prompt: str, text: str) -> int:
    """Where the model's part of `text` starts: after the prompt, if the text still begins with it."""
    head = prompt.strip()
    return len(head) if text[: len(head)].lower() == head.lower() else 0


def score_sample(preset: str, result: GenerationResult) -> SampleScores:
    story = result.prompt + result.text
    cleaned = postprocess(story, cut=result.finish_reason == "length")
    articles = count_articles(result.text)
    finished = result.finish_reason == "eos"
    raw = score_grammar(story, model_start=len(result.prompt), finished=finished)
    post = score_grammar(cleaned, model_start=prompt_offset(result.prompt, cleaned), finished=finished)
    repetition = score_repetition(result.text)
    return SampleScores(
        preset=preset,
        prompt=result.prompt,
        seed=result.seed,
        continuation=result.text,
        postprocessed=cleaned,
        finish_reason=result.finish_reason,
        tokens=result.tokens,
        seconds=result.seconds,
        words=articles.words,
        articles=articles.articles,
        articles_per_100_words=articles.per_100_words,
        grammar_raw=raw.score,
        grammar_postprocessed=post.score,
        grammar_checks_raw=raw.checks,
        grammar_checks_postprocessed=post.checks,
        unique_word_ratio=repetition.unique_word_ratio,
        distinct_2=repetition.distinct_2,
        longest_repeated_ngram=repetition.longest_repeated_ngram,
    )


def warm_up(generator: Generator, prompt: str) -> None:
    """One short untimed generation, so the first scored sample's tokens/s is not a cold start."""
    generator.generate(prompt, PRESETS["balanced"].replace(max_new_tokens=2, seed=0))


def generate_and_score(
    generator: Generator,
    prompts: Sequence[str],
    preset: str,
    num_samples: int,
    seed: int,
    max_new_tokens: int,
    on_sample: Callable[[SampleScores], None] | None = None,
) -> list[SampleScores]:
    """`num_samples` stories per prompt with a named preset, each scored."""
    params = PRESETS[preset].replace(max_new_tokens=max_new_tokens)
    scored = []
    for prompt in prompts:
        for i in range(num_samples):
            result = generator.generate(prompt, params.replace(seed=seed + i))
            sample = score_sample(preset, result)
            scored.append(sample)
            if on_sample is not None:
                on_sample(sample)
    return scored


# ---------------------------------------------------------------------------------------------
# One set of scored samples reduced to the numbers a report shows.
# Means are over samples; article density and distinct-n pool all samples' words (so long and
# short stories weigh by their length, and identical stories across seeds lower distinct-n);
# tokens/s is total tokens over total generation time. Pooled distinct-n falls as the sample count
# grows, so compare it only between runs with the same prompts and number of samples.

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
