"""A decode batch: many requests advanced together, one token each per forward pass.

Batch-1 decoding reads every weight to produce one token; decoding n requests in the same pass
reads them once for n tokens. Requests join and leave between steps (continuous batching):
`admit` prefills new requests into free cache rows and samples their first tokens, `step`
decodes every active row, finished and cancelled rows are dropped by moving the last row into
their place.

The CLI's single story is a batch of one, so there is one decoding loop for both.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch

from src.generation.native import native_sampler, rng_state
from src.generation.presets import SamplingParams
from src.generation.sampling import RowSettings, draw, sample_tokens, sampling_distribution
from src.generation.steps import CompiledDecode, NativeDecode, choose_step
from src.model.kv_cache import KVCache
from src.model.transformer_block import WikiMiniModel


def decode_cache_dtype(model: WikiMiniModel) -> torch.dtype:
    """float32 keys/values on CPU whatever the weights: CPU attention kernels are several times faster in
    float32 than in bf16 at decode shapes, and the cache is small next to the weights."""
    weight = model.tok_embeddings.weight
    return torch.float32 if weight.device.type == "cpu" else weight.dtype


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
    rng_state: int = field(init=False)  # the native sampler's generator
    next_input: int = field(init=False)
    _rng: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.window_ids:
            raise ValueError("cannot generate from an empty prompt with a tokenizer that has no EOS/BOS token")
        self.rng_state = rng_state(self.seed)

    @property
    def rng(self) -> torch.Generator:
        """PyTorch sampling's generator, made when first used (the native sampler has its own)."""
        if self._rng is None:
            self._rng = torch.Generator()
            self._rng.manual_seed(self.seed)
        return self._rng

    def __reduce__(self):
        """Pickled (sent to a decode process) as what it asks for; it starts afresh there."""
        return Request, (self.window_ids, self.penalty_ids, self.params, self.seed)


class PrefixCache:
    """Keys, values and last logits of recently prefilled windows, least recently used evicted
    first, within a byte budget (0: off). A window seen before (the web UI's default prompt,
    a client retrying) is copied into its row instead of being prefilled again.

    Entries depend on the window only, so they stay valid for as long as the model is unchanged.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.entries: collections.OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (
            collections.OrderedDict())

    def __contains__(self, window: tuple[int, ...]) -> bool:
        return window in self.entries

    def store(self, window: tuple[int, ...], cache: KVCache, row: int, logits: torch.Tensor) -> None:
        n = len(window)
        if window in self.entries:
            return
        keys, values = cache.read(row, n)
        size = self._size((keys, values, logits))
        if size > self.max_bytes // 4:
            return
        while self.used_bytes + size > self.max_bytes:
            self.used_bytes -= self._size(self.entries.popitem(last=False)[1])
        self.entries[window] = (keys, values, logits.clone())
        self.used_bytes += size

    def restore(self, window: tuple[int, ...], cache: KVCache, row: int) -> torch.Tensor:
        """Write the window's keys/values into `row`; return its logits."""
        keys, values, logits = self.entries[window]
        self.entries.move_to_end(window)
        cache.write(row, keys, values)
        return logits

    @staticmethod
    def _size(entry: tuple[torch.Tensor, ...]) -> int:
        return sum(t.numel() * t.element_size() for t in entry)


class DecodeBatch:
    def __init__(self, model: WikiMiniModel, eos_id: int | None, slots: int, prefix_cache_bytes: int = 0,
                 decode: str = "auto") -> None:
        self.model = model
        self.eos_id = eos_id
        self.slots = slots
        self.max_seq_len = model.config.max_seq_len
        # when the context is full, restart the cache from the last three quarters of it
        self.keep = max(1, self.max_seq_len - self.max_seq_len // 4)
        self.device = model.tok_embeddings.weight.device
        self.cache = model.new_kv_cache(rows=slots, dtype=decode_cache_dtype(model))
        self.lengths = [0] * slots  # positions written in each row of the cache
        self.seen = torch.zeros(slots, model.config.vocab_size, dtype=torch.bool, device=self.device)
        self._seen_on_cpu = self.seen.numpy() if self.device.type == "cpu" else None  # the same memory
        self.requests: list[Request] = []  # row i decodes requests[i]
        self._rows_changed = True  # requests joined, left or moved since the sampler last saw them
        self._settings: RowSettings | None = None  # PyTorch sampling's per-row settings
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.decoder = choose_step(model, self.cache, decode)  # native, compiled or eager (src/generation/steps.py)
        # Sampling: in C++ on CPU (src/generation/native.py), else PyTorch's (sampling.py).
        self._sampler = native_sampler(self.device, slots)

    @property
    def compile_state(self) -> str:
        """The decode step: "native", "eager", or a compiled one's "compiling", "ready", "failed"."""
        return self.decoder.state

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.requests)

    @torch.inference_mode()
    def admit(self, requests: list[Request]) -> list[tuple[Request, int]]:
        """Prefill new requests in one right-padded pass and sample their first tokens.

        Returns the (request, first token) pairs: a stream's first token comes from its own
        prefill, without waiting for a decode step.
        """
        if len(requests) > self.free_slots:
            raise ValueError(f"{len(requests)} requests for {self.free_slots} free slots")
        if not requests:
            return []
        requests, windows, source = self._by_window(requests)
        start = len(self.requests)
        self._mark_prompt_tokens(requests, start)
        logits = self._fill_leader_rows(start, windows)
        if len(windows) < len(requests):  # rows that share a leader's window share its logits
            logits = logits[torch.tensor(source, device=self.device)]
        copies = [(start + row, start + leader) for row, leader in enumerate(source) if row != leader]
        if copies:  # the other requests of a window copy its leader's keys/values
            targets, sources = (torch.tensor(c, device=self.device) for c in zip(*copies))
            self.cache.copy_rows(sources, targets, span=max(len(w) for w in windows))
            for target, leader in copies:
                self.lengths[target] = self.lengths[leader]
        seen = self.seen[start:start + len(requests)]
        if self._sampler is not None:
            tokens = self._sampler.sample(logits, seen, requests)
        else:
            settings = RowSettings.of([r.params for r in requests], self.device)
            tokens = sample_tokens(logits, settings, [r.rng for r in requests], seen).tolist()
            self.seen[torch.arange(start, start + len(requests)), tokens] = True
        self.requests.extend(requests)
        self._rows_changed = True
        emitted = self._record(requests, tokens)
        self._drop_finished()
        return emitted

    def _by_window(self, requests: list[Request]) -> tuple[list[Request], list[tuple[int, ...]], list[int]]:
        """Identical windows (many stories start "Once upon a time") are computed once: one
        request per window leads. Returns the requests in row order (leaders whose window must be
        prefilled, leaders found in the prefix cache, then the rest), the leaders' windows in
        that order, and for each row the row of its leader (relative to the first new row)."""
        window_of = {id(r): tuple(r.window_ids[-self.keep:]) for r in requests}
        first_by_window: dict[tuple[int, ...], Request] = {}
        for request in requests:
            first_by_window.setdefault(window_of[id(request)], request)
        leaders = sorted(first_by_window.values(), key=lambda r: window_of[id(r)] in self.prefix_cache)
        ordered = leaders + [r for r in requests if r not in leaders]
        windows = [window_of[id(r)] for r in leaders]
        return ordered, windows, [windows.index(window_of[id(r)]) for r in ordered]

    def _mark_prompt_tokens(self, requests: list[Request], start: int) -> None:
        """The repetition penalty's memory of each new row: its prompt tokens."""
        if self._seen_on_cpu is not None:  # numpy indexes a few ids without torch's dispatch cost
            seen = self._seen_on_cpu
            seen[start:start + len(requests)] = False
            for row, request in enumerate(requests, start):
                seen[row, request.penalty_ids] = True
            return
        self.seen[start:start + len(requests)] = False
        pairs = [(row, token) for row, r in enumerate(requests, start) for token in r.penalty_ids]
        if pairs:
            self.seen[tuple(torch.tensor(pairs, device=self.device).T)] = True

    def _fill_leader_rows(self, start: int, windows: list[tuple[int, ...]]) -> torch.Tensor:
        """Write each window's keys/values into rows start, start+1, ...: from the prefix cache
        where it has them, else by one prefill (then kept there). Returns the logits after each
        window (n, V). Cached rows are restored first: a store may evict an entry still needed."""
        to_prefill = [w for w in windows if w not in self.prefix_cache]
        restored = []
        for row, window in enumerate(windows[len(to_prefill):], start + len(to_prefill)):
            restored.append(self.prefix_cache.restore(window, self.cache, row))
            self.lengths[row] = len(window)
        prefilled = []
        if to_prefill:
            prefilled = list(self._prefill(start, [list(w) for w in to_prefill], want_logits=True))
            for offset, window in enumerate(to_prefill):
                self.prefix_cache.store(window, self.cache, start + offset, prefilled[offset])
        rows = prefilled + restored
        return rows[0][None] if len(rows) == 1 else torch.stack(rows)

    def _prefill(self, start: int, windows: list[list[int]], want_logits: bool = False) -> torch.Tensor | None:
        """Write each window's keys/values into rows start, start+1, ...; optionally return the
        logits after each window's last token (n, V)."""
        lengths = [len(w) for w in windows]
        logits = self.decoder.prefill(windows, start) if all(lengths) else None
        self.lengths[start:start + len(windows)] = lengths
        return logits if want_logits else None

    def _slide_full_rows(self) -> None:
        for row, request in enumerate(self.requests):
            if self.lengths[row] >= self.max_seq_len:
                # restart from the recent context, all but the last token, which the step feeds
                window = (request.window_ids + request.generated)[-self.keep:]
                if len(window) > 1:
                    self._prefill(row, [window[:-1]])
                else:
                    self.lengths[row] = 0

    @torch.inference_mode()
    def step(self, steps: int = 1) -> list[tuple[Request, int]]:
        """Decode one token for every active request, or up to `steps` tokens each where the
        native step runs them in one call (it stops early once any row ends); return the
        (request, token) pairs in order.

        Requests that finish (EOS, length) or were cancelled leave the batch afterwards; their
        `finish_reason` says why.
        """
        self._drop_finished()
        if not self.requests:
            return []
        self._slide_full_rows()
        n = len(self.requests)
        requests = list(self.requests)
        if self._rows_changed:
            if self._sampler is not None:
                self._sampler.bind(requests)
            else:
                self._settings = RowSettings.of([r.params for r in requests], self.device)
            self._rows_changed = False
        inputs, positions = [r.next_input for r in requests], self.lengths[:n]
        if isinstance(self.decoder, NativeDecode) and self._sampler is not None:  # one call: steps and draws
            stops = [self.eos_id if r.params.stop_at_eos and self.eos_id is not None else -1 for r in requests]
            budgets = [r.params.max_new_tokens - len(r.generated) for r in requests]
            each_step = self.decoder.decode(inputs, positions, self._sampler, self.seen[:n], stops, budgets,
                                            self.max_seq_len, steps)
        else:
            each_step = [self._sample(self.decoder.logits(inputs, positions))]
        emitted = []
        for tokens in each_step:
            for row in range(n):
                self.lengths[row] += 1
            emitted += self._record(requests, tokens)
        self._drop_finished()
        return emitted

    def _sample(self, logits: torch.Tensor) -> list[int]:
        """Each active row's next token from its logits; marks it seen (the repetition penalty)."""
        n = len(self.requests)
        if self._sampler is not None:
            return self._sampler.sample(logits, self.seen[:n])
        distribution = sampling_distribution(logits, self._settings, self.seen[:n])
        tokens = draw(distribution, self._settings, [r.rng for r in self.requests])
        self.seen[torch.arange(n, device=self.device), tokens] = True
        return tokens.tolist()

    def compile_in_background(self):
        """Start compiling a compiled decode step on a thread (decoding stays eager until it is
        ready); the thread, or None for another kind of step."""
        if isinstance(self.decoder, CompiledDecode):
            return self.decoder.compile_in_background(self.slots)
        return None

    def _record(self, requests: list[Request], tokens: list[int]) -> list[tuple[Request, int]]:
        """Note each row's new token (finish); return the (request, token) pairs of the generated
        tokens: an EOS that ends a story is not one of them, the request's `finish_reason` says
        "eos" instead. Finished rows stay until `_drop_finished`."""
        emitted = []
        for request, token in zip(requests, tokens):
            if token == self.eos_id and request.params.stop_at_eos:
                request.finish_reason = "eos"
                continue
            emitted.append((request, token))
            request.generated.append(token)
            request.next_input = token
            if len(request.generated) >= request.params.max_new_tokens:
                request.finish_reason = "length"
        return emitted

    def clear(self) -> None:
        """Forget every request (after a failed step)."""
        self.requests.clear()
        self._rows_changed = True

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
                self.cache.copy_row(last, row, span=self.lengths[last])
                self.lengths[row] = self.lengths[last]
                self.seen[row] = self.seen[last]
                self.requests[row] = self.requests[last]
            self.requests.pop()
            self._rows_changed = True
