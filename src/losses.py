"""What a language-model loss means, in one place: the target the loss skips, and the two
numbers derived from mean nats per token (perplexity, and bits per byte, which compares models
with different vocabularies)."""

from __future__ import annotations

import math

IGNORE_INDEX = -100  # targets with this value add nothing to the loss: cross_entropy's own default


def perplexity(mean_loss_nats_per_token: float) -> float:
    """exp(loss), capped where float exp would overflow (a diverged run's loss)."""
    return math.exp(min(mean_loss_nats_per_token, 700.0))


def bits_per_byte(mean_loss_nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """Loss in bits per UTF-8 byte of text: tokenizer-independent, so vocabularies compare.

    Pass the token and byte counts of the same text (e.g. a TokenCache's n_tokens and n_bytes).
    """
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return mean_loss_nats_per_token * n_tokens / (n_bytes * math.log(2))
