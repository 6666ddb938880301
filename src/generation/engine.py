"""The generation engine: KV-cached decoding with sampling, EOS stop, sliding context, streaming.

One `Generator` wraps a read-only model and its tokenizer. Each call decodes in its own
DecodeBatch of one (own KV cache and random generator), so one Generator can serve concurrent
requests from several threads; the server instead decodes concurrent requests together
(`src/generation/scheduler.py`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from src.data.tokenizer import EOS_TOKEN
from src.generation.presets import SamplingParams
from src.generation.batch import DecodeBatch, Request
from src.generation.streaming import StreamDecoder
from src.model.checkpoint import LoadedModel
from src.model.transformer_block import WikiMiniModel


@dataclass
class GenerationResult:
    prompt: str
    text: str  # the continuation only, raw (no post-processing)
    token_ids: list[int]  # generated tokens, without the final EOS
    finish_reason: str  # "eos", "length" or "cancelled"
    seed: int
    prompt_tokens: int
    seconds: float
    time_to_first_token: float

    @property
    def tokens(self) -> int:
        return len(self.token_ids) + (1 if self.finish_reason == "eos" else 0)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class GenerationStream:
    """Iterate for text deltas; after the iteration ends, `result` holds the whole outcome.

    Closing the stream early (a client went away) stops decoding at the next token.
    """

    _deltas: Iterator[str]
    result: GenerationResult | None = field(default=None)

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def close(self) -> None:
        self._deltas.close()  # type: ignore[attr-defined]


class TextAssembler:
    """Token ids in, UTF-8-safe text deltas out; then the GenerationResult. Shared by the CLI
    stream and the server, whichever thread produced the tokens."""

    def __init__(self, tokenizer: Tokenizer, eos_id: int | None, prompt: str, prompt_tokens: int,
                 params: SamplingParams, seed: int) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.eos_id, self.prompt, self.prompt_tokens = eos_id, prompt, prompt_tokens
        self.params, self.seed = params, seed
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.start = time.perf_counter()
        self.first_token_at: float | None = None

    def push(self, token: int) -> str:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter() - self.start
        if token == self.eos_id and self.params.stop_at_eos:
            self.finish_reason = "eos"
            return ""
        self.generated.append(token)
        if len(self.generated) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        return self.decoder.push(token)

    def flush(self) -> str:
        return self.decoder.flush()

    def result(self) -> GenerationResult:
        return GenerationResult(
            prompt=self.prompt,
            text=self.decoder.text,
            token_ids=list(self.generated),
            finish_reason=self.finish_reason or "cancelled",
            seed=self.seed,
            prompt_tokens=self.prompt_tokens,
            seconds=time.perf_counter() - self.start,
            time_to_first_token=self.first_token_at or 0.0,
        )


class Generator:
    def __init__(self, model: WikiMiniModel, tokenizer: Tokenizer, eos_id: int | None = None,
                 compile_decode: bool = False, story_prefix: list[int] | None = None) -> None:
        self.model = model.eval()
        self.compile_decode = compile_decode  # see DecodeBatch: a compiled single-row step
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None else tokenizer.token_to_id(EOS_TOKEN)
        # What a story starts after, as the checkpoint declares it (`LoadedModel.story_prefix`):
        # our stories follow an EOS token in the training stream, llama2.c's follow BOS. The
        # default (no checkpoint at hand) is our own convention.
        if story_prefix is None:
            story_prefix = [self.eos_id] if tokenizer.token_to_id(EOS_TOKEN) is not None else []
        self.story_prefix = list(story_prefix)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, compile_decode: bool = False) -> Generator:
        return cls(loaded.model, loaded.tokenizer, loaded.eos_id, compile_decode=compile_decode,
                   story_prefix=loaded.story_prefix)

    def encode_prompt(self, prompt: str) -> list[int]:
        # No special tokens from the tokenizer: `story_prefix` alone says what a story starts after.
        return self.tokenizer.encode(prompt, add_special_tokens=False).ids

    @staticmethod
    def seed_for(params: SamplingParams) -> int:
        """The request's seed, or a fresh random one (reported back, so the story can be redone)."""
        return params.seed if params.seed is not None else random.randrange(2**31)

    def new_request(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> Request:
        """A request for a DecodeBatch: the story prefix, the prompt, the settings and the seed."""
        return Request(self.story_prefix + list(prompt_ids), list(prompt_ids), params, seed)

    def iter_token_ids(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        """Yield sampled token ids one at a time, ending with EOS (if stop_at_eos) or at the limit.

        When the context fills up, the cache restarts from the most recent three quarters of
        the context, so output can run past `max_seq_len` without error.
        """
        batch = DecodeBatch(self.model, self.eos_id, slots=1, compile_decode=self.compile_decode)
        request = self.new_request(prompt_ids, params, seed)
        emitted = batch.admit([request])
        while True:
            for _, token in emitted:
                yield token
            if request.finish_reason is not None:
                return
            emitted = batch.step()

    def stream(self, prompt: str, params: SamplingParams) -> GenerationStream:
        """Start generating; iterate the returned stream for text deltas."""
        seed = self.seed_for(params)
        prompt_ids = self.encode_prompt(prompt)
        stream = GenerationStream(iter(()))

        def deltas() -> Iterator[str]:
            assembler = self.assembler(prompt, prompt_ids, params, seed)
            try:
                for token in self.iter_token_ids(prompt_ids, params, seed):
                    delta = assembler.push(token)
                    if delta:
                        yield delta
                    if assembler.finish_reason is not None:
                        break
                tail = assembler.flush()
                if tail:
                    yield tail
            finally:
                stream.result = assembler.result()

        stream._deltas = deltas()
        return stream

    def assembler(self, prompt: str, prompt_ids: list[int], params: SamplingParams, seed: int) -> TextAssembler:
        return TextAssembler(self.tokenizer, self.eos_id, prompt, len(prompt_ids), params, seed)

    def generate(self, prompt: str, params: SamplingParams) -> GenerationResult:
        stream = self.stream(prompt, params)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result
