"""The generation engine: KV-cached decoding with sampling, EOS stop, sliding context, streaming.

One `Generator` wraps a read-only model and its tokenizer. Each call builds its own KV cache
and random generator, so one Generator can serve concurrent requests from several threads.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from src.data.tokenizer import EOS_TOKEN
from src.generation.presets import SamplingParams
from src.generation.sampling import sample_next_token
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


class Generator:
    def __init__(self, model: WikiMiniModel, tokenizer: Tokenizer, eos_id: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None else tokenizer.token_to_id(EOS_TOKEN)
        self.device = model.tok_embeddings.weight.device
        self.max_seq_len = model.config.max_seq_len
        # Stories in the training stream begin right after an EOS token, so a prompt that
        # starts after one is read as the start of a story.
        self.story_prefix = [self.eos_id] if tokenizer.token_to_id(EOS_TOKEN) is not None else []

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> Generator:
        return cls(loaded.model, loaded.tokenizer, loaded.eos_id)

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt).ids

    @torch.inference_mode()
    def iter_token_ids(self, prompt_ids: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        """Yield sampled token ids one at a time, ending with EOS (if stop_at_eos) or at the limit.

        When the context fills up, the cache restarts from the most recent three quarters of
        the context, so output can run past `max_seq_len` without error.
        """
        rng = torch.Generator(device=self.device)
        rng.manual_seed(seed)
        prefix = self.story_prefix
        history = list(prompt_ids)  # what the repetition penalty looks at
        keep = max(1, self.max_seq_len - self.max_seq_len // 4)
        cache = self.model.new_kv_cache(batch_size=1)
        penalty_ids = torch.tensor([history], dtype=torch.long, device=self.device)

        def prefill() -> torch.Tensor:
            cache.reset()
            window = (prefix + history)[-keep:] if len(prefix) + len(history) > keep else prefix + history
            if not window:
                raise ValueError("cannot generate from an empty prompt with a tokenizer that has no EOS/BOS token")
            ids = torch.tensor([window], dtype=torch.long, device=self.device)
            return self.model(ids, kv_cache=cache, last_logits_only=True)[:, -1]

        logits = prefill()
        for step in range(params.max_new_tokens):
            token = int(sample_next_token(logits, penalty_ids, params, rng)[0])
            yield token
            if token == self.eos_id and params.stop_at_eos:
                return
            if step == params.max_new_tokens - 1:
                return
            history.append(token)
            penalty_ids = torch.cat(
                (penalty_ids, torch.tensor([[token]], dtype=torch.long, device=self.device)), dim=1
            )
            if cache.length >= self.max_seq_len:
                logits = prefill()
            else:
                next_ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
                logits = self.model(next_ids, kv_cache=cache, last_logits_only=True)[:, -1]

    def stream(self, prompt: str, params: SamplingParams) -> GenerationStream:
        """Start generating; iterate the returned stream for text deltas."""
        seed = params.seed if params.seed is not None else random.randrange(2**31)
        prompt_ids = self.encode_prompt(prompt)
        stream = GenerationStream(iter(()))

        def deltas() -> Iterator[str]:
            start = time.perf_counter()
            first_token_at = None
            decoder = StreamDecoder(self.tokenizer)
            finish = "cancelled"
            generated: list[int] = []
            try:
                for token in self.iter_token_ids(prompt_ids, params, seed):
                    if first_token_at is None:
                        first_token_at = time.perf_counter() - start
                    if token == self.eos_id and params.stop_at_eos:
                        finish = "eos"
                        break
                    generated.append(token)
                    delta = decoder.push(token)
                    if delta:
                        yield delta
                else:
                    finish = "length"
                tail = decoder.flush()
                if tail:
                    yield tail
            finally:
                stream.result = GenerationResult(
                    prompt=prompt,
                    text=decoder.text,
                    token_ids=generated,
                    finish_reason=finish,
                    seed=seed,
                    prompt_tokens=len(prompt_ids),
                    seconds=time.perf_counter() - start,
                    time_to_first_token=first_token_at or 0.0,
                )

        stream._deltas = deltas()
        return stream

    def generate(self, prompt: str, params: SamplingParams) -> GenerationResult:
        stream = self.stream(prompt, params)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result
