"""The key/value cache for incremental decoding: one class for every way we decode.

The cache is storage only, shaped (n_layers, rows, kv_heads, capacity, head_dim). It keeps no
lengths: every forward pass says where its tokens go with `input_pos` (B, T), as litgpt's
`KVCache` and Meta's llama (`start_pos`) do. So one class serves a single story, a right-padded
prompt batch, a ragged decode batch whose rows sit at different positions, and a compiled step
whose shapes never change.

A cache belongs to its requests, never to the model, so concurrent requests share one model.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A cache over existing storage; `KVCache.allocate` makes new storage."""
        if keys.shape != values.shape or keys.dim() != 5:
            raise ValueError(f"keys/values must share one 5-D shape, got {tuple(keys.shape)} and {tuple(values.shape)}")
        self.keys, self.values = keys, values

    @classmethod
    def allocate(cls, n_layers: int, rows: int, n_kv_heads: int, head_dim: int, capacity: int,
                 device: torch.device | str, dtype: torch.dtype) -> KVCache:
        shape = (n_layers, rows, n_kv_heads, capacity, head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows start..stop-1 as a cache of their own (to prefill them); writes land here."""
        return KVCache(self.keys[:, start:stop], self.values[:, start:stop])

    def copy_rows(self, sources: torch.Tensor, targets: torch.Tensor, span: int) -> None:
        """Copy the first `span` positions of rows `sources` into rows `targets`."""
        self.keys[:, targets, :, :span] = self.keys[:, sources, :, :span]
        self.values[:, targets, :, :span] = self.values[:, sources, :, :span]

    def update(self, layer: int, input_pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's keys/values (B, kv_heads, T, head_dim) into rows 0..B-1 at positions
        `input_pos` (B, T); return those rows' first `span` positions, new ones included."""
        batch = keys.shape[0]
        index = input_pos[:, None, :, None].expand(keys.shape)
        layer_keys, layer_values = self.keys[layer, :batch], self.values[layer, :batch]
        layer_keys.scatter_(2, index, keys.to(layer_keys.dtype))
        layer_values.scatter_(2, index, values.to(layer_values.dtype))
        return layer_keys[:, :, :span], layer_values[:, :, :span]
