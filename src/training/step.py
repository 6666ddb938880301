"""One optimizer step: gradient accumulation over micro-batches, clipping, update.

Each micro-batch's loss is divided by the number of micro-batches before backward, so the
accumulated gradient is the gradient of the mean loss over the whole step: batch 4 x 2
micro-batches gives the same update as batch 8 x 1. Under DDP, gradients are all-reduced
only on the last micro-batch (`no_sync` for the others).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from src.training.precision import Precision

Batch = tuple[torch.Tensor, torch.Tensor]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], Batch],
    accum_steps: int,
    precision: Precision,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,  # None: no loss scaling (a disabled scaler)
    max_grad_norm: float = 0.0,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean loss over the micro-batches, pre-clip gradient norm or None), both still on device."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    for micro in range(accum_steps):
        x, y = next_batch()
        if device.type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.to(device), y.to(device)
        last = micro == accum_steps - 1
        with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
            with precision.autocast():
                _, loss = model(x, y)
            scaled = loss / accum_steps
            scaler.scale(scaled).backward()
        loss_sum += loss.detach().float()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = None
    if max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)  # skipped when the scaled gradients overflowed
    scaler.update()
    return loss_sum / accum_steps, grad_norm
