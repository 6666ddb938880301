"""Generate seeded samples with the one generation engine and score each one.

Sample i of every prompt uses seed `seed + i`, so a run is reproducible and two presets are
compared on the same seeds. Articles and repetition are counted in the raw continuation only;
grammar is scored twice, on the raw story (prompt + continuation) and on its post-processed
form, so the clean-up can never pass for model quality.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from src.evaluation.articles import count_articles
from src.evaluation.grammar import score_grammar
from src.evaluation.repetition import score_repetition
from src.generation.engine import GenerationResult, Generator
from src.generation.postprocess import postprocess
from src.generation.presets import PRESETS


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
