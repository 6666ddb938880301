"""Pre-allocated key/value caches for incremental decoding.

A cache belongs to its requests, never to the model, so concurrent requests can share one
read-only model. Two kinds, one interface (`rope_tables`, `update`, `advance`):

- `KVCache`: every row at the same length (one request, or a prompt batch right-padded to one
  length). `length` is the number of positions already written.
- `RaggedKVCache`: the first `active` rows of a slot store, each at its own length, decoding one
  token per step: how the server runs many streams in one forward pass.
"""

from __future__ import annotations

import torch

CAUSAL = "causal"  # `update` result: plain causal attention over the returned keys


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (n_layers, batch_size, n_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.length = 0

    @classmethod
    def over(cls, keys: torch.Tensor, values: torch.Tensor) -> KVCache:
        """A cache writing into existing storage (e.g. some rows of a RaggedKVCache's store)."""
        cache = cls.__new__(cls)
        cache.keys, cache.values = keys, values
        cache.capacity, cache.length = keys.shape[3], 0
        return cache

    def rope_tables(self, cos: torch.Tensor, sin: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary rows for the next `seq_len` positions, shape (seq_len, head_dim)."""
        return cos[self.length:self.length + seq_len], sin[self.length:self.length + seq_len]

    def next_length(self, seq_len: int) -> int:
        return self.length + seq_len

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        """Write this layer's new keys/values after `length`.

        Returns (all keys, all values, mask) where mask is what the new queries may see: CAUSAL,
        None (every key), or a boolean (queries, keys) tensor.
        """
        past, seq_len = self.length, keys.shape[2]
        end = past + seq_len
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.keys[layer, :, :, past:end] = keys
        self.values[layer, :, :, past:end] = values
        if past == 0:
            mask = CAUSAL if seq_len > 1 else None
        elif seq_len == 1:
            mask = None
        else:  # a chunk after a cached prefix: query i (position past+i) sees keys 0..past+i
            mask = torch.ones(seq_len, end, dtype=torch.bool, device=keys.device).tril(diagonal=past)
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end], mask

    def advance(self, n_tokens: int) -> None:
        """Called by the model once every layer has written its `n_tokens` new positions."""
        self.length += n_tokens

    def reset(self) -> None:
        self.length = 0


class RaggedKVCache:
    """Slots for up to `slots` sequences; rows 0..active-1 decode together, one token each step.

    `lengths[i]` is how many positions row i has written. The owner keeps active rows packed at
    the front (`move_row` fills a hole) and fills new rows through `rows_view`.
    """

    def __init__(self, n_layers: int, slots: int, n_kv_heads: int, head_dim: int, capacity: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (n_layers, slots, n_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.lengths = [0] * slots
        self.active = 0
        self._step: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def rows_view(self, start: int, stop: int) -> KVCache:
        """A uniform-length cache over rows start..stop-1, for prefilling them."""
        return KVCache.over(self.keys[:, start:stop], self.values[:, start:stop])

    def move_row(self, source: int, target: int) -> None:
        self.keys[:, target] = self.keys[:, source]
        self.values[:, target] = self.values[:, source]
        self.lengths[target] = self.lengths[source]

    def _prepare(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row indices, positions, key mask) for this step, shared by every layer."""
        if self._step is None:
            positions = torch.tensor(self.lengths[:self.active], dtype=torch.long, device=device)
            span = max(self.lengths[:self.active]) + 1
            mask = torch.arange(span, device=device)[None, :] <= positions[:, None]
            rows = torch.arange(self.active, device=device)
            self._step = (rows, positions, mask[:, None, None, :])
        return self._step

    def rope_tables(self, cos: torch.Tensor, sin: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len != 1:
            raise ValueError("a ragged cache decodes one token per row per step")
        _, positions, _ = self._prepare(cos.device)
        return cos[positions][:, None, None, :], sin[positions][:, None, None, :]

    def next_length(self, seq_len: int) -> int:
        return max(self.lengths[:self.active]) + seq_len

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        rows, positions, mask = self._prepare(keys.device)
        span = mask.shape[-1]
        if span > self.capacity:
            raise ValueError(f"KV cache overflow: {span} positions > capacity {self.capacity}")
        self.keys[layer, rows, :, positions] = keys[:, :, 0].to(self.keys.dtype)
        self.values[layer, rows, :, positions] = values[:, :, 0].to(self.values.dtype)
        # a single row sees every key up to its own position: no mask needed
        return (self.keys[layer, :self.active, :, :span], self.values[layer, :self.active, :, :span],
                None if self.active == 1 else mask)

    def advance(self, n_tokens: int) -> None:
        for row in range(self.active):
            self.lengths[row] += n_tokens
        self._step = None


class SingleRowView:
    """Row 0 of a RaggedKVCache, decoding one token per call with every shape fixed: the position
    is a tensor, each layer's keys/values are the row's whole capacity, and a mask hides the
    positions not written yet. A compiled forward is therefore traced once for the whole story
    (`DecodeBatch(compile_decode=True)`), where the ragged cache's Python lengths would retrace it.

    The owner sets `position` before each call and advances the ragged cache's length after it.
    """

    def __init__(self, store: RaggedKVCache) -> None:
        self.layer_keys = list(store.keys[:, 0:1].unbind(0))  # views: writes land in the store
        self.layer_values = list(store.values[:, 0:1].unbind(0))
        self.capacity = store.capacity
        self.position = torch.zeros(1, dtype=torch.long, device=store.keys.device)
        self.slots = torch.arange(store.capacity, device=store.keys.device)

    def rope_tables(self, cos: torch.Tensor, sin: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len != 1:
            raise ValueError("a single-row view decodes one token per call")
        return cos[self.position][:, None, None, :], sin[self.position][:, None, None, :]

    def next_length(self, seq_len: int) -> int:
        return self.capacity  # the owner slides the context before the row fills up

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        cached_keys, cached_values = self.layer_keys[layer], self.layer_values[layer]
        cached_keys.index_copy_(2, self.position, keys.to(cached_keys.dtype))
        cached_values.index_copy_(2, self.position, values.to(cached_values.dtype))
        return cached_keys, cached_values, (self.slots <= self.position)[None, None, None, :]

    def advance(self, n_tokens: int) -> None:
        """Nothing: the owner advances the ragged cache outside the compiled step."""
