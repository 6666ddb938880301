"""Causal self-attention with RoPE, optional grouped-query heads and a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.model.config import ModelConfig
from src.model.kv_cache import KVCache
from src.model.norm import RMSNorm
from src.model.rope import apply_rope


def masked_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query per row over keys masked per row (each row at its own position), softmax in fp32.

    Plain matmuls: on CPU, SDPA with a mask and a single query is slower than this for a batch
    of rows.
    """
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    weights = scores.float().masked_fill(~mask, float("-inf")).softmax(dim=-1).to(v.dtype)
    return weights @ v


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_heads = config.n_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout if config.attention_dropout is None else config.attention_dropout
        # One matmul for q, k and v: fewer kernel launches, which matters most at batch 1.
        qkv_out = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.d_model, qkv_out, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=False)
        if config.qk_norm:  # normalized queries and keys bound the attention logits
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)
        self.qk_norm = config.qk_norm

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Without a cache: causal attention over `x`. With one: the new keys/values go to
        `input_pos` (B, T), and `mask` (B, 1, T, span) says which cached positions each query sees."""
        batch, seq_len, _ = x.shape
        q_size = self.n_heads * self.head_dim
        kv_size = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        q = q.view(batch, seq_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, input_pos, k, v, span=mask.shape[-1])
            q = q.to(k.dtype)  # a float32 cache under bf16 weights: attention runs in float32
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)

        if kv_cache is None:
            dropout = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif seq_len == 1:
            out = masked_decode_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, seq_len, q_size).to(x.dtype)
        return self.out_proj(out)
