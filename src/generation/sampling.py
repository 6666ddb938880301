"""Turn next-token logits into a token: repetition penalty, temperature, top-k, top-p, draw.

The semantics match `transformers`' logits processors (tests compare against them):
the repetition penalty divides positive logits and multiplies negative ones of every token
already in the context, so repeated tokens always become less likely.
"""

from __future__ import annotations

import torch

from src.generation.presets import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, context_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V); context_ids (B, T) of tokens seen so far (prompt and output)."""
    if penalty == 1.0 or context_ids.numel() == 0:
        return logits
    seen = torch.gather(logits, 1, context_ids)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, context_ids, seen)


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties at the k-th value are kept)."""
    if top_k <= 0 or top_k >= logits.size(-1):
        return logits
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token when the tokens before it already reach top_p (the top token always stays)
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, context_ids: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The filtered, temperature-scaled logits that `sample_next_token` draws from."""
    logits = apply_repetition_penalty(logits.float(), context_ids, params.repetition_penalty)
    if params.temperature == 0:
        return logits
    logits = logits / params.temperature
    logits = apply_top_k(logits, params.top_k)
    return apply_top_p(logits, params.top_p)


def sample_next_token(
    logits: torch.Tensor,
    context_ids: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    logits = process_logits(logits, context_ids, params)
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
