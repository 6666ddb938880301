"""The generation engine: KV-cached decoding with sampling, EOS stop, sliding context, streaming.

One `Generator` wraps a read-only model and its tokenizer. Each call decodes in its own
DecodeBatch of one (own KV cache and random generator), so one Generator can serve concurrent
requests from several threads; the server instead decodes concurrent requests together
(`src/server/decode_loop.py`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from src.data.tokenizer import EOS_TOKEN
from src.generation import native
from src.generation.batch import DecodeBatch, Request
from src.generation.presets import SamplingParams
from src.generation.text import GenerationResult, StoryText
from src.model.checkpoint import LoadedModel
from src.model.transformer_block import WikiMiniModel


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


STEPS_PER_CALL = 16  # a lone story's tokens per native call: fewer trips through Python, text still streams


class Generator:
    def __init__(self, model: WikiMiniModel, tokenizer: Tokenizer, eos_id: int | None = None,
                 decode: str = "auto", story_prefix: list[int] | None = None) -> None:
        self.model = model.eval()
        self.decode_step = decode  # which decode step (src/generation/steps.py): auto, compile or eager
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None else tokenizer.token_to_id(EOS_TOKEN)
        # What a story starts after, as the checkpoint declares it (`LoadedModel.story_prefix`):
        # our stories follow an EOS token in the training stream, llama2.c's follow BOS. The
        # default (no checkpoint at hand) is our own convention.
        if story_prefix is None:
            story_prefix = [self.eos_id] if tokenizer.token_to_id(EOS_TOKEN) is not None else []
        self.story_prefix = list(story_prefix)
        if decode in ("auto", "compile") and self.model.tok_embeddings.weight.device.type == "cpu":
            native.library()  # a first build on this machine happens now, not inside a story's clock

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, decode: str = "auto") -> Generator:
        return cls(loaded.model, loaded.tokenizer, loaded.eos_id, decode=decode,
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

    def decode(self, request: Request) -> Iterator[int]:
        """Decode one request alone: yield each generated token (never the EOS that ends it);
        once the iteration ends, `request.finish_reason` says why ("eos" or "length").

        When the context fills up, the cache restarts from the most recent three quarters of
        the context, so output can run past `max_seq_len` without error.
        """
        batch = DecodeBatch(self.model, self.eos_id, slots=1, decode=self.decode_step)
        emitted = batch.admit([request])
        while True:
            for _, token in emitted:
                yield token
            if request.finish_reason is not None:
                return
            emitted = batch.step(STEPS_PER_CALL)

    def story_text(self, prompt: str, prompt_ids: list[int], seed: int, stops: list[str] | None = None) -> StoryText:
        return StoryText(self.tokenizer, prompt, len(prompt_ids), seed, stops)

    def stream(self, prompt: str, params: SamplingParams) -> GenerationStream:
        """Start generating; iterate the returned stream for text deltas."""
        seed = self.seed_for(params)
        prompt_ids = self.encode_prompt(prompt)
        stream = GenerationStream(iter(()))

        def deltas() -> Iterator[str]:
            text = self.story_text(prompt, prompt_ids, seed)
            request = self.new_request(prompt_ids, params, seed)
            try:
                for token in self.decode(request):
                    if delta := text.extend([token]):
                        yield delta
                if tail := text.extend([], request.finish_reason):
                    yield tail
            finally:
                text.finish("cancelled")  # a no-op once finished
                stream.result = text.result()

        stream._deltas = deltas()
        return stream

    def generate(self, prompt: str, params: SamplingParams) -> GenerationResult:
        stream = self.stream(prompt, params)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result
