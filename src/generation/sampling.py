"""Turn next-token logits into tokens: repetition penalty, temperature, top-k, top-p, draw.

Every row of a batch is its own request with its own settings and its own random generator,
so the CLI (one row) and the server (many rows decoded together) share this one sampler.
The semantics match `transformers`' logits processors, applied in the order
RepetitionPenalty → Temperature → TopK → TopP (tests compare against them): the penalty divides
positive logits and multiplies negative ones of every token already in the context, so repeated
tokens always become less likely.

Each row draws one uniform number from its own generator per token (inverse-CDF sampling), so a
seeded request gives the same story whether it runs alone or beside others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from src.generation.presets import SamplingParams


@dataclass
class RowSettings:
    """Per-row sampling settings as (n, 1) tensors, built once per batch composition."""

    temperature: torch.Tensor
    divisor: torch.Tensor  # the temperature, 1 for greedy rows: what logits are divided by
    top_k: torch.Tensor  # 0 = off
    top_p: torch.Tensor
    penalty: torch.Tensor
    all_greedy: bool
    any_greedy: bool
    any_penalty: bool
    plain: torch.Tensor  # (n, 1) bool: rows with neither top-k nor top-p
    any_plain: bool
    any_filter: bool  # some row has top-k or top-p: candidates must be sorted by logit
    max_top_k: int  # 0 when some row has top-k off: candidates are then the whole vocabulary

    @classmethod
    def of(cls, params: Sequence[SamplingParams], device: torch.device | str = "cpu") -> RowSettings:
        def column(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device).view(-1, 1)

        top_ks = [p.top_k for p in params]
        return cls(
            temperature=column([p.temperature for p in params]),
            divisor=column([p.temperature if p.temperature > 0 else 1.0 for p in params]),
            top_k=column(top_ks, torch.long),
            top_p=column([p.top_p for p in params]),
            penalty=column([p.repetition_penalty for p in params]),
            all_greedy=all(p.temperature == 0 for p in params),
            any_greedy=any(p.temperature == 0 for p in params),
            any_penalty=any(p.repetition_penalty != 1.0 for p in params),
            plain=column([p.top_k == 0 and p.top_p >= 1.0 for p in params], torch.bool),
            any_plain=any(p.top_k == 0 and p.top_p >= 1.0 for p in params),
            any_filter=any(p.top_k > 0 or p.top_p < 1.0 for p in params),
            max_top_k=0 if 0 in top_ks else max(top_ks),
        )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """logits (n, V); seen (n, V) bool marks tokens already in each row's context; penalty (n, 1)."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def candidates(logits: torch.Tensor, rows: RowSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(filtered scaled logits, token ids), both (n, C) sorted by logit, -inf where filtered out.

    A row with neither top-k nor top-p keeps every token in vocabulary order instead, in any batch,
    so its draws do not depend on its neighbours; a batch of only such rows needs no sort.

    `logits` are already penalized. Candidates are the top max(top_k) tokens (the whole
    vocabulary when a row has top-k off); within them each row keeps its own top-k (ties at the
    k-th value kept, as transformers does) and then its own top-p nucleus.
    """
    vocab = logits.size(-1)
    temperature = rows.divisor
    if not rows.any_filter:  # plain sampling: every token a candidate, in vocabulary order, no sort
        return logits / temperature, torch.arange(vocab, device=logits.device).expand(logits.size(0), vocab)
    if 0 < rows.max_top_k < vocab:  # a positive temperature keeps the order: select, then scale
        values, ids = torch.topk(logits, rows.max_top_k, dim=-1)
    else:
        values, ids = torch.sort(logits, dim=-1, descending=True)
    values = values / temperature
    k = torch.where(rows.top_k > 0, rows.top_k, vocab).clamp(max=values.size(-1))
    kth_value = values.gather(-1, k - 1)
    values = values.masked_fill(values < kth_value, float("-inf"))
    # top-p: drop a token when the more likely tokens before it already reach top_p (the top
    # token always stays); probabilities are those after top-k, as in transformers
    probs = values.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs
    values = values.masked_fill(before >= rows.top_p, float("-inf"))
    if rows.any_plain:  # rows that filter nothing keep vocabulary order, as alone (C == V: top_k is 0)
        values = torch.where(rows.plain, logits / temperature, values)
        ids = torch.where(rows.plain, torch.arange(vocab, device=logits.device), ids)
    return values, ids


def sampling_distribution(logits: torch.Tensor, rows: RowSettings, seen: torch.Tensor | None = None):
    """(penalized float logits (n, V), CDF over each row's candidates (n, C), their token ids).

    Pure tensor work, no random draw. It stays eager beside a compiled decode step: settings
    differ per request, and a graph per mix of settings would recompile."""
    logits = logits.float()
    if rows.any_penalty and seen is not None:
        logits = apply_repetition_penalty(logits, seen, rows.penalty)
    if rows.all_greedy:
        return logits, None, None
    values, ids = candidates(logits, rows)
    return logits, values.softmax(dim=-1).cumsum(dim=-1), ids


def sample_tokens(
    logits: torch.Tensor,
    rows: RowSettings,
    generators: Sequence[torch.Generator],
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token ids (n,) from last-position logits (n, V); row i draws from `generators[i]`."""
    return draw(sampling_distribution(logits, rows, seen), rows, generators)


def draw(distribution, rows: RowSettings, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Token ids (n,) from a `sampling_distribution` result: argmax for greedy rows, else one
    uniform number per row from its own generator, looked up in the row's CDF."""
    logits, cdf, ids = distribution
    if rows.all_greedy:
        return logits.argmax(dim=-1)
    uniforms = torch.cat([torch.rand(1, generator=g) for g in generators]).to(cdf.device)
    position = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1)).clamp(max=cdf.size(-1) - 1)
    sampled = ids.gather(-1, position).squeeze(-1)
    if rows.any_greedy:
        return torch.where(rows.temperature.squeeze(-1) > 0, sampled, logits.argmax(dim=-1))
    return sampled
