"""AdamW with weight decay on matrices only.

Decaying norm gains (the 1-D parameters) pulls them toward zero for no benefit; embeddings and
linear weights (2-D) are decayed, as in nanoGPT and Llama.
"""

from __future__ import annotations

import torch
from torch import nn

from src.training.config import OptimizerConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():  # tied weights appear once
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimizerConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused kernel (one launch for all parameters) on CUDA unless config.fused says otherwise."""
    fused = config.fused if config.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        fused=fused or None,
    )
