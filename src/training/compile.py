"""torch.compile: on by default for CUDA on Linux (where it pays off), off elsewhere.

Compilation happens lazily at the first forward/backward, so failures surface there; the
trainer catches them on the first step and carries on in eager mode with a warning.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def compile_wanted(setting: bool | str, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda" and sys.platform.startswith("linux")
    return bool(setting)


def try_compile(model: nn.Module) -> tuple[nn.Module | None, str | None]:
    """(compiled module, None), or (None, warning) when torch.compile itself is unavailable."""
    try:
        return torch.compile(model), None
    except Exception as exc:  # e.g. unsupported Python / platform
        return None, f"torch.compile unavailable ({type(exc).__name__}: {exc}); training in eager mode"
