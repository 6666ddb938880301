"""Training and validation batches cut from a flat token array (a TokenCache's memmap).

Windows: window i is tokens[i*T : i*T + T + 1] for sequence length T, and
    x = window[:-1],  y = window[1:]
This is the one and only label shift in the project: the model takes targets already aligned.
Windows start every T tokens, so the x parts (and the y parts) tile the text without overlap and
every token is a target exactly once per epoch; neighbouring windows share only a boundary token.

Training order: each epoch is a permutation of all windows, drawn from (seed, epoch), and cut
into global batches of world_size * batch_size windows; rank r takes the r-th slice of each,
so N ranks with batch B see exactly the windows one process with batch N*B sees. A trailing
part of an epoch smaller than one global batch is skipped (every rank takes the same number of
steps). `state_dict()` records (seed, epoch, position) and resumes at the exact next batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from src.losses import IGNORE_INDEX


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Number of full windows of seq_len + 1 tokens, starting every seq_len tokens."""
    return max(0, (n_tokens - 1) // seq_len)


def _windows_to_tensors(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    windows = torch.from_numpy(windows)
    return windows[:, :-1], windows[:, 1:]


class TrainBatches:
    """Shuffled, resumable, rank-sharded training batches: `next_batch() -> (x, y)` of (B, T)."""

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.global_batch_size = batch_size * world_size
        self.n_windows = num_windows(len(tokens), seq_len)
        if self.n_windows < self.global_batch_size:
            raise ValueError(
                f"{len(tokens)} tokens make {self.n_windows} windows of {seq_len + 1}, fewer than one global"
                f" batch of {self.global_batch_size} (batch_size {batch_size} x world_size {world_size})"
            )
        self.epoch = 0  # epoch of the next batch (= epochs completed)
        self.position = 0  # windows of this epoch already handed out, over all ranks
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    @property
    def batches_per_epoch(self) -> int:
        return self.n_windows // self.global_batch_size

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
            self._order, self._order_epoch = rng.permutation(self.n_windows), self.epoch
        return self._order

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y) for the next global batch: int64 tensors of shape (batch_size, seq_len)."""
        first = self.position + self.rank * self.batch_size
        windows = self._epoch_order()[first : first + self.batch_size]
        self.position += self.global_batch_size
        if self.position + self.global_batch_size > self.n_windows:
            self.epoch, self.position = self.epoch + 1, 0
        return _windows_to_tensors(self.tokens, windows * self.seq_len, self.seq_len)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "seq_len": self.seq_len,
            "n_windows": self.n_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the batch after the one last handed out when `state` was taken.

        The position counts windows, not batches, so a resume with another world_size or batch
        size carries on from the same place in the same epoch order.
        """
        for key in ("seq_len", "n_windows"):
            if state[key] != getattr(self, key):
                raise ValueError(f"batch state is for {key}={state[key]}, this data has {key}={getattr(self, key)}")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        if self.position + self.global_batch_size > self.n_windows:
            self.epoch, self.position = self.epoch + 1, 0


def validation_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All windows in order, so every token after the first is a target exactly once.

    The last, partial window is kept: x is padded with token 0 and y with IGNORE_INDEX (-100),
    so average the loss over targets != -100. The last batch may hold fewer windows.
    """
    n_full = num_windows(len(tokens), seq_len)
    n_total = n_full + (1 if (len(tokens) - 1) % seq_len else 0)
    n_batches = math.ceil(n_total / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        indices = range(b * batch_size, min((b + 1) * batch_size, n_total))
        x = torch.zeros(len(indices), seq_len, dtype=torch.long)
        y = torch.full((len(indices), seq_len), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(indices):
            window = torch.from_numpy(tokens[i * seq_len : i * seq_len + seq_len + 1].astype(np.int64))
            x[row, : len(window) - 1] = window[:-1]
            y[row, : len(window) - 1] = window[1:]
        yield x, y
