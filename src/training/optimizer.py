"""AdamW with weight decay on matrices only, or Muon for the hidden matrices beside AdamW.

Decaying norm gains (the 1-D parameters) pulls them toward zero for no benefit; embeddings and
linear weights (2-D) are decayed, as in nanoGPT and Llama.

Muon (`torch.optim.Muon`) orthogonalizes the update of 2-D hidden weights only; the embedding
(tied with the output head) and the norm gains stay on AdamW, as in modded-nanogpt and
Moonshot's "Muon is Scalable". Its update is rescaled to AdamW's RMS (`adjust_lr_fn=
"match_rms_adamw"`), so one learning rate can serve both.

`torch.optim.Muon` runs its Newton-Schulz iteration in bf16. On a CPU without bf16 instructions
bf16 matmuls are emulated, hundreds of times slower than fp32, and the optimizer step would
cost more than the forward and backward passes; there the same iteration runs in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from src.training.config import OptimizerConfig

EMBEDDING_NAMES = ("tok_embeddings.weight", "output.weight")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():  # tied weights appear once
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """2-D weights inside the blocks (attention and feed-forward): what Muon updates."""
    seen: set[int] = set()
    out = []
    for name, param in model.named_parameters():
        if param.requires_grad and param.dim() == 2 and not name.endswith(EMBEDDING_NAMES) and id(param) not in seen:
            seen.add(id(param))
            out.append(param)
    return out


class OptimizerChain:
    """Several optimizers stepped as one: what the trainer, GradScaler and checkpoints see.

    `param_groups` lists every child's groups (each with its LR_RATIO to the scheduled rate),
    and `state_dict()` holds one entry per child, so resuming restores each exactly.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for optimizer in self.optimizers for k, v in optimizer.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"chain": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        chain = state.get("chain") if isinstance(state, dict) else None
        if not isinstance(chain, list) or len(chain) != len(self.optimizers):
            raise ValueError("the saved optimizer state is for a different optimizer (optimizer.name changed?)")
        for optimizer, child in zip(self.optimizers, chain):
            optimizer.load_state_dict(child)


_TORCH_NEWTON_SCHULZ = getattr(torch.optim._muon, "_zeropower_via_newtonschulz", None)  # bf16, kept for tests


def _newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalization, computed in fp32."""
    a, b, c = ns_coefficients
    x = grad.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if transposed else x


def _use_fp32_newton_schulz(device: torch.device) -> bool:
    """Route Muon's bf16 iteration to fp32 where bf16 is emulated (CPUs without AVX512-BF16/AMX)."""
    from torch.optim import _muon

    from src.device import native_bf16_cpu

    if device.type != "cpu" or native_bf16_cpu() or not hasattr(_muon, "_zeropower_via_newtonschulz"):
        return False
    _muon._zeropower_via_newtonschulz = _newton_schulz_fp32
    return True


LR_RATIO = "lr_ratio"  # on every param group: its rate over the scheduled one (Muon's: muon_lr / lr)


def set_learning_rate(optimizer, lr: float) -> None:
    """Apply the schedule's rate `lr`: each param group runs at `lr` times its LR_RATIO."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group[LR_RATIO]


def build_optimizer(model: nn.Module, config: OptimizerConfig, device: torch.device):
    """AdamW (fused on CUDA unless config.fused says otherwise), or Muon + AdamW."""
    fused = config.fused if config.fused is not None else device.type == "cuda"
    if config.name == "adamw":
        optimizer = torch.optim.AdamW(
            parameter_groups(model, config.weight_decay), lr=config.lr, betas=tuple(config.betas),
            eps=config.eps, fused=fused or None,
        )
        for group in optimizer.param_groups:
            group[LR_RATIO] = 1.0
        return optimizer
    hidden = hidden_matrices(model)
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden_ids]
    muon_lr = config.muon_lr or config.lr
    _use_fp32_newton_schulz(device)
    muon = torch.optim.Muon(hidden, lr=muon_lr, weight_decay=config.weight_decay,
                            momentum=config.muon_momentum, adjust_lr_fn="match_rms_adamw")
    for group in muon.param_groups:
        group[LR_RATIO] = muon_lr / config.lr
    adamw = torch.optim.AdamW(
        [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay},
         {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
        lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused or None,
    )
    for group in adamw.param_groups:
        group[LR_RATIO] = 1.0
    return OptimizerChain([muon, adamw])
