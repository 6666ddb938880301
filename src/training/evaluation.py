"""Validation during training: mean loss per predicted token, perplexity and bits per byte.

Every evaluation scores the same windows in the same order (src.data.batches.validation_batches),
so numbers are comparable across steps and runs. Under DDP each rank scores every
world_size-th batch and the sums are added up, so the result does not depend on the rank count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from src.data.batches import IGNORE_INDEX, bits_per_byte, validation_batches
from src.training.distributed import DistInfo, all_reduce_sum
from src.training.precision import Precision


@dataclass(frozen=True)
class EvalResult:
    loss: float  # nats per predicted token
    bpb: float

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))  # exp overflows float past ~709


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: np.ndarray,
    n_bytes: int,
    seq_len: int,
    batch_size: int,
    precision: Precision,
    device: torch.device,
    info: DistInfo,
) -> EvalResult:
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # total nats, predicted tokens
    for index, (x, y) in enumerate(validation_batches(tokens, seq_len, batch_size)):
        if index % info.world_size != info.rank:
            continue
        x, y = x.to(device), y.to(device)
        with precision.autocast():
            _, loss = model(x, y)
        count = (y != IGNORE_INDEX).sum()
        sums[0] += loss.double() * count
        sums[1] += count
    all_reduce_sum(sums, info)
    model.train(was_training)
    nats, count = sums.tolist()
    mean = nats / count
    return EvalResult(loss=mean, bpb=bits_per_byte(mean, int(count), n_bytes))
