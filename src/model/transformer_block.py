"""WikiMiniModel: a Llama-2-style decoder (pre-norm RMSNorm, RoPE, SwiGLU, no biases).

Read top to bottom: FeedForward, TransformerBlock, then the model. Attention lives in
attention.py, RMSNorm in norm.py, rotary tables in rope.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from src.model.attention import Attention
from src.model.config import ModelConfig
from src.model.kv_cache import KVCache
from src.model.norm import RMSNorm
from src.model.rope import rope_cos_sin


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.hidden = config.ffn_dim
        self.gate_up_proj = nn.Linear(config.d_model, 2 * self.hidden, bias=False)
        self.down_proj = nn.Linear(self.hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = Attention(config, layer_index)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.feed_forward = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, kv_cache: KVCache | None = None, input_pos=None, mask=None) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), cos, sin, kv_cache, input_pos, mask))
        return x + self.dropout(self.feed_forward(self.ffn_norm(x)))


class WikiMiniModel(nn.Module):
    """Decoder-only language model.

    `model(input_ids)` returns logits (B, T, V). `model(input_ids, targets)` returns
    `(logits, loss)`, where `targets[b, t]` is the token that follows `input_ids[b, t]`: the
    data pipeline makes that shift once, and the model never shifts again.
    """

    def __init__(self, config: ModelConfig | dict[str, Any]) -> None:
        super().__init__()
        config = ModelConfig.from_dict(config)
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_cos_sin(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Residual projections scaled by 1/sqrt(2 * n_layers) (GPT-2) so the residual stream's
        # variance does not grow with depth.
        residual_std = 0.02 / math.sqrt(2 * config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("out_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Unique weights (a tied embedding counts once), int8-quantized ones included."""
        count = sum(p.numel() for p in self.parameters())
        for name, buffer in self.named_buffers():
            if name.endswith("weight_int8") and not (self.config.tie_embeddings and name == "output.weight_int8"):
                count += buffer.numel()
        return count

    def new_kv_cache(self, rows: int = 1, dtype: torch.dtype | None = None) -> KVCache:
        """A cache for `rows` sequences of up to the model's context (weights' dtype by default)."""
        weight = self.tok_embeddings.weight
        return KVCache.allocate(self.config.n_layers, rows, self.config.kv_heads, self.config.head_dim,
                                self.config.max_seq_len, weight.device, dtype or weight.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
        key_span: int | None = None,
        last_logits_only: bool = False,
        logit_positions: torch.Tensor | None = None,
    ):
        """Logits for `input_ids` (B, T).

        With `kv_cache`, `input_pos` (B, T) gives each token's position: its keys/values are
        written there and it attends to the positions up to its own. Attention reads the first
        `key_span` cached positions (default: up to the furthest position in `input_pos`); a
        compiled decode step passes the cache's capacity, so its shapes never change.

        `last_logits_only` computes the vocabulary projection for the final position alone,
        which is all that sampling needs; `logit_positions` (B,) picks one position per row
        instead (the last real token of each prompt in a right-padded batch). Either way the
        logits have shape (B, 1, V).
        """
        batch, seq_len = input_ids.shape
        mask = None
        if kv_cache is None:
            if seq_len > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {seq_len} tokens exceeds the model's context of {self.config.max_seq_len}"
                )
            cos, sin = self.rope_cos[:seq_len], self.rope_sin[:seq_len]
        else:
            if input_pos is None:
                raise ValueError("decoding with a KV cache needs input_pos, the tokens' positions")
            input_pos = input_pos.expand(batch, seq_len)
            span = key_span if key_span is not None else int(input_pos.max()) + 1
            if span > kv_cache.capacity:
                raise ValueError(
                    f"sequence of {span} tokens exceeds the model's context of {kv_cache.capacity}"
                )
            cos, sin = self.rope_cos[input_pos][:, None], self.rope_sin[input_pos][:, None]
            keys_at = torch.arange(span, device=input_ids.device)
            mask = (keys_at <= input_pos[..., None])[:, None]  # (B, 1, T, span): causal per row
        x = self.dropout(self.tok_embeddings(input_ids))
        for layer in self.layers:
            x = layer(x, cos, sin, kv_cache, input_pos, mask)
        x = self.norm(x)
        if logit_positions is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logit_positions][:, None, :]
        elif last_logits_only:
            x = x[:, -1:, :]
        logits = self.output(x)
        if targets is None:
            return logits
        # targets of -100 (src.losses.IGNORE_INDEX: padding) are skipped, cross_entropy's default
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
