"""Token ids to text for one story: the one place that does it, for the CLI and the server.

`StoryText` takes the sampled tokens (EOS never among them: the decode batch ends a story and
says why), emits text deltas that never split a UTF-8 character and never show the start of a
stop sequence (OpenAI's `stop`), and ends with a `GenerationResult` carrying the finish reason.

Byte-level tokens can end in the middle of a multi-byte character. Decoding only the tokens not
yet emitted, and holding back text that ends in U+FFFD (an incomplete character), makes the
deltas concatenate to exactly `tokenizer.decode(all_ids)` at O(n) cost for a story of n tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tokenizers import Tokenizer

REPLACEMENT_CHAR = "\ufffd"
FINISH_REASONS = ("eos", "length", "cancelled", "stop")


@dataclass
class GenerationResult:
    prompt: str
    text: str  # the continuation only, raw (no post-processing), cut before a stop sequence
    token_ids: list[int]  # generated tokens, without the final EOS
    finish_reason: str  # "eos", "length", "cancelled", or "stop" (a stop sequence matched)
    seed: int
    prompt_tokens: int
    seconds: float
    time_to_first_token: float
    ended_at_eos: bool = False  # the model generated EOS (also when a stop sequence cut the text)

    @property
    def tokens(self) -> int:
        """Tokens the model generated, the EOS that ended the story included."""
        return len(self.token_ids) + (1 if self.ended_at_eos or self.finish_reason == "eos" else 0)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class StoryText:
    def __init__(self, tokenizer: Tokenizer, prompt: str, prompt_tokens: int, seed: int,
                 stops: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.prompt, self.prompt_tokens, self.seed = prompt, prompt_tokens, seed
        self.stops = [s for s in stops or [] if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # chars that may start a stop
        self.ids: list[int] = []
        self.decoded_upto = 0  # ids before this index are decoded into `text`
        self.text = ""  # decoded so far, whole characters only
        self.emitted = 0  # characters of `text` already returned as deltas
        self.finish_reason: str | None = None
        self.ended_at_eos = False
        self.start = time.perf_counter()
        self.first_token_at: float | None = None

    def push(self, token: int) -> str:
        """Add one generated token; return the text that is now safe to show (maybe empty)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter() - self.start
        if self.finish_reason is not None:
            return ""
        self.ids.append(token)
        piece = self.tokenizer.decode(self.ids[self.decoded_upto:])
        if piece.endswith(REPLACEMENT_CHAR):
            return ""  # an incomplete character: wait for its next byte
        self.decoded_upto = len(self.ids)
        self.text += piece
        return self._release(final=False)

    def extend(self, tokens: list[int], finish_reason: str | None = None) -> str:
        """Add tokens that arrived together, and the reason the story ended once it has: the text
        now safe to show. The CLI and the server both feed a story through here."""
        delta = "".join(self.push(token) for token in tokens)
        return delta + self.finish(finish_reason) if finish_reason is not None else delta

    def finish(self, reason: str) -> str:
        """The story ended ("eos", "length", "cancelled"): return what was held back."""
        if reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish reason {reason!r}")
        if self.finish_reason is not None:
            return ""
        self.ended_at_eos = reason == "eos"
        self.text += self.tokenizer.decode(self.ids[self.decoded_upto:])
        self.decoded_upto = len(self.ids)
        tail = self._release(final=True)
        if self.finish_reason is None:
            self.finish_reason = reason
        return tail

    def _release(self, final: bool) -> str:
        cut = min((i for i in (self.text.find(s, max(0, self.emitted - self.hold)) for s in self.stops) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            self.text = self.text[:cut]
            end = cut
        else:
            end = len(self.text) if final else len(self.text) - self.hold
        if end <= self.emitted:
            return ""
        delta, self.emitted = self.text[self.emitted:end], end
        return delta

    def result(self) -> GenerationResult:
        return GenerationResult(
            prompt=self.prompt,
            text=self.text,
            token_ids=list(self.ids),
            finish_reason=self.finish_reason or "cancelled",
            seed=self.seed,
            prompt_tokens=self.prompt_tokens,
            seconds=time.perf_counter() - self.start,
            time_to_first_token=self.first_token_at or 0.0,
            ended_at_eos=self.ended_at_eos,
        )
