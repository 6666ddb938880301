"""A decode batch: many requests advanced together, one token each per forward pass.

Batch-1 decoding reads every weight to produce one token; decoding n requests in the same pass
reads them once for n tokens. Requests join and leave between steps (continuous batching):
`admit` prefills new requests into free cache rows, `step` decodes every active row, finished
and cancelled rows are dropped by moving the last row into their place.

The CLI's single story is a batch of one, so there is one decoding loop for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from src.generation.presets import SamplingParams
from src.generation.sampling import RowSettings, sample_tokens
from src.model.transformer_block import WikiMiniModel


@dataclass(eq=False)
class Request:
    """One story being generated. `window_ids` is the context it starts from."""

    window_ids: list[int]  # story prefix + prompt
    penalty_ids: list[int]  # tokens the repetition penalty looks at (the prompt)
    params: SamplingParams
    seed: int
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "eos", "length" or "cancelled" once done
    cancelled: bool = False
    rng: torch.Generator = field(init=False)
    next_input: int = field(init=False)

    def __post_init__(self) -> None:
        if not self.window_ids:
            raise ValueError("cannot generate from an empty prompt with a tokenizer that has no EOS/BOS token")
        self.rng = torch.Generator()
        self.rng.manual_seed(self.seed)


class DecodeBatch:
    def __init__(self, model: WikiMiniModel, eos_id: int | None, slots: int) -> None:
        self.model = model
        self.eos_id = eos_id
        self.slots = slots
        self.max_seq_len = model.config.max_seq_len
        # when the context is full, restart the cache from the last three quarters of it
        self.keep = max(1, self.max_seq_len - self.max_seq_len // 4)
        self.device = model.tok_embeddings.weight.device
        self.cache = model.new_ragged_kv_cache(slots)
        self.seen = torch.zeros(slots, model.config.vocab_size, dtype=torch.bool, device=self.device)
        self.requests: list[Request] = []  # row i decodes requests[i]
        self._settings: RowSettings | None = None

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.requests)

    def admit(self, requests: list[Request]) -> None:
        """Prefill each request's window, all but its last token, in one right-padded pass."""
        if len(requests) > self.free_slots:
            raise ValueError(f"{len(requests)} requests for {self.free_slots} free slots")
        if not requests:
            return
        start = len(self.requests)
        for offset, request in enumerate(requests):
            row = start + offset
            self.seen[row] = False
            if request.penalty_ids:
                self.seen[row, torch.tensor(request.penalty_ids, device=self.device)] = True
        self._prefill(start, [r.window_ids[-self.keep:] for r in requests])
        for request in requests:
            request.next_input = request.window_ids[-1]
        self.requests.extend(requests)
        self.cache.active = len(self.requests)
        self._settings = None

    @torch.inference_mode()
    def _prefill(self, start: int, windows: list[list[int]]) -> None:
        contexts = [w[:-1] for w in windows]
        longest = max(len(c) for c in contexts)
        if longest:
            # Right padding is harmless: a real position only attends to earlier positions, and
            # the padded positions' keys are overwritten or masked before any query can see them.
            padded = [c + [0] * (longest - len(c)) for c in contexts]
            ids = torch.tensor(padded, dtype=torch.long, device=self.device)
            view = self.cache.rows_view(start, start + len(windows))
            self.model(ids, kv_cache=view, last_logits_only=True)
        for offset, context in enumerate(contexts):
            self.cache.lengths[start + offset] = len(context)

    def _slide_full_rows(self) -> None:
        for row, request in enumerate(self.requests):
            if self.cache.lengths[row] >= self.max_seq_len:
                window = (request.window_ids + request.generated)[-self.keep:]
                self._prefill(row, [window])

    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """Decode one token for every active request; return (request, token) pairs.

        Requests that finish (EOS, length) or were cancelled leave the batch afterwards; their
        `finish_reason` says why.
        """
        self._drop_finished()
        if not self.requests:
            return []
        self._slide_full_rows()
        if self._settings is None:
            self._settings = RowSettings.of([r.params for r in self.requests], self.device)
        n = len(self.requests)
        ids = torch.tensor([[r.next_input] for r in self.requests], dtype=torch.long, device=self.device)
        logits = self.model(ids, kv_cache=self.cache)[:, -1]
        tokens = sample_tokens(logits, self._settings, [r.rng for r in self.requests], self.seen[:n])
        self.seen[torch.arange(n, device=self.device), tokens] = True
        emitted = []
        for request, token in zip(self.requests, tokens.tolist()):
            emitted.append((request, token))
            if token == self.eos_id and request.params.stop_at_eos:
                request.finish_reason = "eos"
                continue
            request.generated.append(token)
            request.next_input = token
            if len(request.generated) >= request.params.max_new_tokens:
                request.finish_reason = "length"
        self._drop_finished()
        return emitted

    def clear(self) -> None:
        """Forget every request (after a failed step)."""
        self.requests.clear()
        self.cache.active = 0
        self._settings = None

    def _drop_finished(self) -> None:
        row = 0
        while row < len(self.requests):
            request = self.requests[row]
            if request.cancelled and request.finish_reason is None:
                request.finish_reason = "cancelled"
            if request.finish_reason is None:
                row += 1
                continue
            last = len(self.requests) - 1
            if row != last:
                self.cache.move_row(last, row)
                self.seen[row] = self.seen[last]
                self.requests[row] = self.requests[last]
            self.requests.pop()
            self.cache.active = len(self.requests)
            self._settings = None
