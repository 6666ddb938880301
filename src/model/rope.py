"""Rotary position embeddings in the Hugging Face Llama layout.

Each head's dims are split into two halves that rotate together (`rotate_half`). This is the
layout of `transformers`' LlamaForCausalLM and of Llama checkpoints in HF format, so weights
move between the two with no permutation.
"""

from __future__ import annotations

import torch


def rope_cos_sin(head_dim: int, max_positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_positions, head_dim), computed in float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    positions = torch.arange(max_positions, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (B, heads, T, head_dim) by the tables' rows for its T positions."""
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def interleaved_to_halves(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute the rows of a q or k projection from the interleaved RoPE layout of llama2.c and
    llama.cpp (rotating pairs 2i, 2i+1 of each head) to the rotate-half layout (rotating i and
    i + head_dim/2): per head, the even rows, then the odd rows (llama2.c's export to HF does this)."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def halves_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_halves` (what llama.cpp's converter does to HF weights)."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)
