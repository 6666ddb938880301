"""The native sampler draws from the distribution PyTorch's sampler (src/generation/sampling.py,
itself checked against transformers) defines: a chi-square test over many draws per setting."""

from __future__ import annotations

import math

import pytest
import torch

from src.generation import SamplingParams, native
from src.generation.batch import Request
from src.generation.sampling import RowSettings, sampling_distribution
from tests.conftest import native_library_or_skip

VOCAB = 12
SETTINGS = {
    "plain": SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0),
    "top-k": SamplingParams(temperature=0.7, top_k=5, top_p=1.0, repetition_penalty=1.0),
    "top-p": SamplingParams(temperature=1.3, top_k=0, top_p=0.8, repetition_penalty=1.0),
    "all four": SamplingParams(temperature=0.8, top_k=6, top_p=0.9, repetition_penalty=1.5),
    "hot penalty": SamplingParams(temperature=2.0, top_k=0, top_p=1.0, repetition_penalty=3.0),
}


@pytest.fixture(scope="module")
def lib():
    return native_library_or_skip()


def fixed_logits_and_seen() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(VOCAB, generator=generator) * 2
    seen = torch.zeros(VOCAB, dtype=torch.bool)
    negative = torch.where(logits < 0, logits, -torch.inf).argmax()  # the likeliest negative logit
    seen[[int(logits.argmax()), int(negative)]] = True  # the penalty divides one, multiplies the other
    return logits, seen


def pytorch_probabilities(logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    _, cdf, ids = sampling_distribution(logits[None], RowSettings.of([params]), seen[None])
    probs = torch.diff(cdf[0], prepend=torch.zeros(1)) / cdf[0, -1]
    return torch.zeros(VOCAB, dtype=torch.float64).index_add_(0, ids[0], probs.double())


def chi_square_bound(df: int, z: float = 4.75) -> float:
    """The chi-square quantile at about 1 - 1e-6 (Wilson-Hilferty): seeded draws, so a pass or a
    fail is the same on every run, and a correct sampler fails with odds of one in a million."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("name", SETTINGS)
def test_native_draws_follow_the_pytorch_distribution(lib, name):
    params = SETTINGS[name]
    logits, seen = fixed_logits_and_seen()
    expected = pytorch_probabilities(logits, seen, params)
    draws = 40_000
    requests = [Request([1], [], params, seed) for seed in range(draws)]
    sampler = native.NativeSampler(lib, slots=1)
    marks = seen.repeat(draws, 1)
    tokens = torch.tensor(sampler.sample(logits.repeat(draws, 1), marks, requests))
    counts = torch.bincount(tokens, minlength=VOCAB).double()
    assert counts[expected == 0].sum() == 0, "drew a token that top-k/top-p filter out"
    kept = expected > 0
    statistic = float(((counts[kept] - draws * expected[kept]) ** 2 / (draws * expected[kept])).sum())
    assert statistic < chi_square_bound(int(kept.sum()) - 1), (name, counts.tolist(), (draws * expected).tolist())
    assert marks[torch.arange(draws), tokens].all()  # each drawn token is now seen (the penalty's memory)
    assert [r.rng_state for r in requests[:3]] != [native.rng_state(s) for s in range(3)]  # the generators moved on


def test_greedy_rows_take_the_penalized_argmax(lib):
    logits, seen = fixed_logits_and_seen()
    sampler = native.NativeSampler(lib, slots=1)
    for penalty in (1.0, 1.5, 10.0):
        params = SamplingParams(temperature=0.0, repetition_penalty=penalty)
        expected = sampling_distribution(logits[None], RowSettings.of([params]), seen[None])[0].argmax()
        token = sampler.sample(logits[None].clone(), seen[None].clone(), [Request([1], [], params, 0)])
        assert token == [int(expected)]


def test_one_seed_gives_one_sequence_of_draws_bound_or_not(lib):
    """A request's draws depend on its seed alone: sampled as a newcomer, or bound to any row
    of a batch whose rows change between draws."""
    logits, _ = fixed_logits_and_seen()
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0)

    def draws_of(seed: int, neighbours: int) -> list[int]:
        request = Request([1], [], params, seed)
        others = [Request([1], [], params, 100 + i) for i in range(neighbours)]
        sampler = native.NativeSampler(lib, slots=neighbours + 1)
        out = sampler.sample(logits[None].clone(), torch.zeros(1, VOCAB, dtype=torch.bool), [request])
        for step in range(20):
            rows = others[:step % (neighbours + 1)] + [request]  # the request's row moves
            sampler.bind(rows)
            out.append(sampler.sample(logits.repeat(len(rows), 1), torch.zeros(len(rows), VOCAB, dtype=torch.bool))[-1])
        sampler.release()
        return out

    alone = draws_of(7, 0)
    assert alone == draws_of(7, 3) and alone != draws_of(8, 0)
    assert len(set(alone)) > 3
