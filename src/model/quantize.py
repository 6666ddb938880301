"""Weight-only int8 quantization for CPU inference.

Batch-1 decoding reads every weight once per token, so on a CPU it is bound by memory traffic,
not arithmetic. Storing the matmul weights as int8 (one bf16 scale per output row) cuts that
traffic to a quarter of fp32, and the 24.5M reference model's weights then fit in a server
CPU's L3 cache. Activations stay bf16; the matmul is PyTorch's own int8-weight kernel
(`aten._weight_int8pack_mm`, the one torchao uses for int8 weight-only on CPU).

The int8 kernel is a matrix-vector kernel: past a few rows (prefill, a batch of streams) a dense
matmul is faster (`bench/bench_decode.py` shows where).
So each layer also keeps its dequantized weight and picks by the number of rows; both paths use
the same quantized values. The dense copy is bf16 where the CPU multiplies bf16 natively and
fp32 elsewhere, where a bf16 matmul is emulated and several times slower than fp32.

Only for inference: the quantized model has no gradients and cannot be saved as a checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.device import native_bf16_cpu

INT8_KERNEL_MAX_ROWS = 4  # above this many rows, the dense matmul on dequantized weights is faster


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per row): symmetric, round to nearest, |q| <= 127."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return quantized.contiguous(), scales


class Int8Linear(nn.Module):
    """A bias-free Linear whose weight is int8 with a per-output-row scale."""

    def __init__(self, weight: torch.Tensor, activation_dtype: torch.dtype = torch.bfloat16,
                 dense_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        quantized, scales = quantize_rows(weight)
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("scales", scales.to(activation_dtype))
        dequantized = (quantized.float() * scales[:, None]).to(dense_dtype or activation_dtype)
        self.register_buffer("weight_dequantized", dequantized, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype)
        if flat.shape[0] > INT8_KERNEL_MAX_ROWS:
            out = F.linear(flat.to(self.weight_dequantized.dtype), self.weight_dequantized).to(flat.dtype)
        else:
            out = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self.weight_int8, self.scales)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model: nn.Module, activation_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Cast `model` to `activation_dtype` and swap every nn.Linear for an Int8Linear, in place.

    A tied output projection gets its own int8 copy; the embedding table it shares weights with
    stays in `activation_dtype` for the lookup.
    """
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 weight-only inference runs on CPU; use bf16 on GPUs")
    model.to(activation_dtype)
    native = activation_dtype != torch.bfloat16 or native_bf16_cpu()
    dense_dtype = activation_dtype if native else torch.float32
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, linear in linears:
        if linear.bias is not None:
            raise ValueError(f"{name} has a bias; int8 weight-only quantization here expects none")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(linear.weight, activation_dtype, dense_dtype))
    return model.eval().requires_grad_(False)
