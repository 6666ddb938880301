"""The key/value cache for incremental decoding: one class for every way we decode.

The cache is storage only: per layer, keys and values shaped (rows, kv_heads, capacity,
head_dim). It keeps no lengths: every forward pass says where its tokens go with `input_pos`
(B, T), as litgpt's `KVCache` and Meta's llama (`start_pos`) do. So one class serves a single
story, a right-padded prompt batch, a ragged decode batch whose rows sit at different positions,
and a compiled step whose shapes never change.

A cache belongs to its requests, never to the model, so concurrent requests share one model.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """A cache over existing per-layer storage; `KVCache.allocate` makes new storage."""
        shapes = {tuple(t.shape) for t in (*keys, *values)}
        if len(keys) != len(values) or len(shapes) != 1 or keys[0].dim() != 4:
            raise ValueError(f"keys/values must be one 4-D shape per layer, got {sorted(shapes)}")
        self.keys, self.values = list(keys), list(values)

    @classmethod
    def allocate(cls, n_layers: int, rows: int, n_kv_heads: int, head_dim: int, capacity: int,
                 device: torch.device | str, dtype: torch.dtype) -> KVCache:
        # Separate tensors per layer, not one 5-D tensor: a compiled step writes each layer's
        # new entries into its own graph input in place, where writes into views of one shared
        # tensor make it copy the whole cache at every token.
        def storage():
            return [torch.zeros(rows, n_kv_heads, capacity, head_dim, device=device, dtype=dtype)
                    for _ in range(n_layers)]
        return cls(storage(), storage())

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows start..stop-1 as a cache of their own (to prefill them); writes land here."""
        return KVCache([k[start:stop] for k in self.keys], [v[start:stop] for v in self.values])

    def read(self, row: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of one row's first `span` positions, (n_layers, kv_heads, span, head_dim) each."""
        return (torch.stack([k[row, :, :span] for k in self.keys]),
                torch.stack([v[row, :, :span] for v in self.values]))

    def write(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put what `read` returned into `row`."""
        span = keys.shape[2]
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            k[row, :, :span] = keys[layer]
            v[row, :, :span] = values[layer]

    def copy_row(self, source: int, target: int, span: int) -> None:
        """Copy the first `span` positions of row `source` into row `target`: plain slices, without
        the index tensors `copy_rows` builds."""
        for storage in (*self.keys, *self.values):
            storage[target, :, :span].copy_(storage[source, :, :span])

    def copy_rows(self, sources: torch.Tensor, targets: torch.Tensor, span: int) -> None:
        """Copy the first `span` positions of rows `sources` into rows `targets`."""
        for storage in (*self.keys, *self.values):
            storage[targets, :, :span] = storage[sources, :, :span]

    def update(self, layer: int, input_pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's keys/values (B, kv_heads, T, head_dim) into rows 0..B-1 at positions
        `input_pos` (B, T); return those rows' first `span` positions, new ones included."""
        batch = keys.shape[0]
        layer_keys, layer_values = self.keys[layer], self.values[layer]
        at = (torch.arange(batch, device=keys.device)[:, None], slice(None), input_pos)
        layer_keys[at] = keys.transpose(1, 2).to(layer_keys.dtype)  # one index_put_ per tensor
        layer_values[at] = values.transpose(1, 2).to(layer_values.dtype)
        return layer_keys[:batch, :, :span], layer_values[:batch, :, :span]
