"""Pieces of OpenAI's completions API that are not HTTP: a prompt as tokens, and the `logprobs`
block of a choice."""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from src.generation.scoring import TokenScores


@dataclass(frozen=True)
class PromptTokens:
    """One prompt: its text, its token ids, and the window decoding starts from (a text prompt's
    window puts the story-start token first; a token-id prompt's is the ids as given)."""

    text: str
    ids: list[int]
    window: list[int]


def logprobs_block(tokenizer: Tokenizer, ids: list[int], scores: TokenScores, start: int) -> dict:
    """OpenAI's `logprobs` for tokens ids[start:]: each token's text, its log-probability given
    the tokens before it (None for the very first token, which has nothing before it), the most
    likely tokens at its position as {text: log-probability}, and its offset in the choice's text."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = 0
    for position in range(start, len(ids)):
        piece = tokenizer.decode([ids[position]], skip_special_tokens=False)
        tokens.append(piece)
        offsets.append(offset)
        offset += len(piece)
        if position == 0:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(scores.logprobs[position - 1])
        top = {}
        for token_id, logprob in scores.top[position - 1]:
            top.setdefault(tokenizer.decode([token_id], skip_special_tokens=False), logprob)
        top_logprobs.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}
