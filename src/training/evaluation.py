"""Validation during training: mean loss per predicted token, perplexity and bits per byte.

Every evaluation scores the same windows in the same order (`sum_nats`, shared with
evaluate_model.py), so numbers compare across steps, runs and the evaluator. Under DDP each
rank scores every world_size-th batch and the sums are added up, so the result does not
depend on the rank count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from src.evaluation.heldout import sum_nats
from src.losses import bits_per_byte, perplexity
from src.training.distributed import DistInfo, all_reduce_sum
from src.training.precision import Precision


@dataclass(frozen=True)
class EvalResult:
    loss: float  # nats per predicted token
    bpb: float

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)


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
    nats, count, _ = sum_nats(model, tokens, seq_len, batch_size, show_progress=False,
                              autocast=precision.autocast, rank=info.rank, world_size=info.world_size)
    model.train(was_training)
    sums = torch.tensor([nats, count], dtype=torch.float64, device=device)  # total nats, predicted tokens
    all_reduce_sum(sums, info)
    nats, count = sums.tolist()
    mean = nats / count
    return EvalResult(loss=mean, bpb=bits_per_byte(mean, int(count), n_bytes))
