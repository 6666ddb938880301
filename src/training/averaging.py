"""An exponential moving average of the weights, for runs that repeat their data many times.

With `training.ema_decay: d`, after every optimizer step `w_avg = d * w_avg + (1 - d) * w`
(torch's AveragedModel with its EMA update). The average is what the run evaluates, writes its
samples with and keeps as its best checkpoints; the raw weights go on training, and
checkpoint_latest.pth holds both, so a resumed run continues the same average.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.model = self.averaged.module.eval()  # the averaged copy, shaped like `model`

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)


def scored_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a run scores, from its checkpoint_latest: the average's when it keeps one."""
    average = (checkpoint.get("training_state") or {}).get("weight_average")
    if average is None:
        return checkpoint["model_state_dict"]
    return {name: average[f"module.{name}"] for name in checkpoint["model_state_dict"]}
