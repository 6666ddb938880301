"""Numeric precision for training: bf16 autocast where the hardware has it, fp16 + loss
scaling on older GPUs, fp32 otherwise. Weights and optimizer state always stay fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from src.device import DTYPES, bf16_supported


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16", "fp16" or "fp32"
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        A disabled scaler passes everything through, so the step has no branches for it."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def choose_precision(requested: str, device: torch.device) -> tuple[Precision, str | None]:
    """(precision, warning or None). An explicit choice the device cannot run falls back, with a warning."""
    if requested == "fp32":
        return Precision("fp32", device.type), None
    if bf16_supported(device) and requested in ("auto", "bf16"):
        return Precision("bf16", device.type), None
    if device.type == "cuda":
        fallback = Precision("fp16", "cuda")
    else:
        fallback = Precision("fp32", device.type)
    warning = None
    if requested != "auto" and requested != fallback.name:
        warning = f"training.precision={requested} is not supported on {device}; using {fallback.name}"
    return fallback, warning


def enable_tf32() -> None:
    """TF32 tensor cores for the fp32 matmuls left outside autocast (CUDA Ampere and newer)."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
