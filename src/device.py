"""Device and dtype choices shared by training, generation and the server."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but Apple MPS is not available on this machine")
    if name.split(":")[0] not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose from {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)


PRECISION_CHOICES = ("auto", "fp32", "bf16", "int8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the names configs and flags use


def cpu_flags() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them ('' where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16 and AMX; ARMv8.6 BF16


def native_bf16_cpu() -> bool:
    """True when this CPU has bf16 matmul instructions (AVX512-BF16, AMX or ARM BF16), so bf16 is fast.

    oneDNN also reports bf16 as supported on plain AVX512, where it converts every operand to
    float32 and bf16 runs slower than float32; the CPU's flags settle it where they are known.
    """
    try:
        mkldnn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    flags = set(cpu_flags().split())
    return mkldnn and (not flags or bool(flags & BF16_FLAGS))


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 runs natively: CUDA Ampere and newer, or a CPU with bf16 instructions."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return native_bf16_cpu()
    return False


def inference_precision(device: torch.device, requested: str = "auto") -> str:
    """The weight format for generation: 'fp32', 'bf16' or 'int8'.

    'auto' picks bf16 on GPUs that support it and int8 weights on every CPU: batch-1 decoding
    is bound by reading the weights, and int8 reads a quarter of fp32's bytes (the demo model's
    held-out bits per byte barely move). Elsewhere fp32.
    """
    requested = (requested or "auto").lower()
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {requested!r}; choose from {', '.join(PRECISION_CHOICES)}")
    if requested == "int8" and device.type != "cpu":
        raise ValueError("precision int8 (weight-only) runs on CPU only; use bf16 on GPUs")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if bf16_supported(device) else "fp32"
    if device.type == "cpu":
        return "int8"
    return "fp32"


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (for benchmark headers)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


SIMD_FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp")


def cpu_summary() -> str:
    """The CPU model, its vector flags that decode speed depends on, and the native step's kernel
    (for benchmark headers: a figure means something only beside the instruction set it ran on)."""
    from src.generation import native

    flags = set(cpu_flags().split())
    lib = native.library()
    kernel = native.kernel(lib) if lib is not None else f"none ({native.unavailable()})"
    arch = os.environ.get("WIKIMINI_NATIVE_ARCH")
    return (f"{cpu_name()}, {os.cpu_count()} cores; flags: {' '.join(f for f in SIMD_FLAGS if f in flags) or 'none'};"
            f" native int8 kernel: {kernel}" + (f" (WIKIMINI_NATIVE_ARCH={arch})" if arch else ""))
