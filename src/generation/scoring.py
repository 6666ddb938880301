"""Log-probabilities of given token sequences under the model's own distribution.

What lm-evaluation-harness and OpenAI's `echo`/`logprobs` ask for: for every token after the
first, log p(token | the tokens before it), with no temperature, penalty or truncation, computed
in float32 from one forward pass per batch of sequences (not token by token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.model.transformer_block import WikiMiniModel

SCORE_BATCH_TOKENS = 4096  # padded tokens per forward pass: bounds memory and the time one pass holds a core


@dataclass
class TokenScores:
    """For sequence ids[0..n): `logprobs[i]` is log p(ids[i + 1] | ids[:i + 1]) and `top[i]` the k
    most likely tokens at that position as (id, log-probability), most likely first."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]]


@torch.inference_mode()
def score_tokens(model: WikiMiniModel, sequences: list[list[int]], top_k: int = 0) -> list[TokenScores]:
    """TokenScores for each sequence, in the order given. A sequence may be one token longer than
    the model's context: its last token is only predicted, never read.

    Sequences are sorted by length and right-padded into batches of about SCORE_BATCH_TOKENS;
    padding never changes a real position's result, since attention is causal."""
    device = model.tok_embeddings.weight.device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    results: list[TokenScores | None] = [None] * len(sequences)
    start = 0
    while start < len(order):
        longest = len(sequences[order[start]])
        stop = start + 1
        while stop < len(order) and len(sequences[order[stop]]) * (stop - start + 1) <= SCORE_BATCH_TOKENS:
            longest = len(sequences[order[stop]])
            stop += 1
        batch = [sequences[i] for i in order[start:stop]]
        ids = torch.tensor([s + [0] * (longest - len(s)) for s in batch], dtype=torch.long, device=device)
        logprobs = F.log_softmax(model(ids[:, :-1]).float(), dim=-1)  # (B, T - 1, V): predicts ids[:, 1:]
        chosen = logprobs.gather(-1, ids[:, 1:, None])[..., 0]  # (B, T - 1)
        top = logprobs.topk(top_k, dim=-1) if top_k else None
        for row, (index, sequence) in enumerate(zip(order[start:stop], batch)):
            n = len(sequence) - 1
            top_row = [] if top is None else [
                list(zip(top.indices[row, i].tolist(), top.values[row, i].tolist())) for i in range(n)]
            results[index] = TokenScores(chosen[row, :n].tolist(), top_row or [[] for _ in range(n)])
        start = stop
    return results
