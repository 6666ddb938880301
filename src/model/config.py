"""Model hyper-parameters as a typed dataclass, stored in checkpoints as a plain dict."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from src.config_utils import ConfigError, dataclass_from_dict

# Upper bounds on each size: far past any model this toolkit trains or imports, and low enough
# that a typo (max_seq_len=1000000000) is refused before a table or weight is allocated.
SIZE_LIMITS = {"vocab_size": 2**20, "d_model": 16_384, "n_layers": 256, "n_heads": 256, "multiple_of": 4096,
               "max_seq_len": 131_072, "d_ffn": 65_536}


def physical_memory_bytes() -> int | None:
    """This machine's RAM, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@dataclass
class ModelConfig:
    """Shape of a WikiMiniModel. Defaults are the 24.5M-parameter reference configuration."""

    vocab_size: int = 10000
    d_model: int = 448
    n_layers: int = 7
    n_heads: int = 7
    n_kv_heads: int | None = None  # None = n_heads (plain multi-head); fewer = grouped-query
    d_ffn: int | None = 1536  # None = Llama rule: multiple_of * ceil((8/3 * d_model) / multiple_of)
    multiple_of: int = 256
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0  # on the embeddings and the residual stream (each block's two branches)
    # On the attention weights; None: the same as dropout. 0 keeps CPU attention on SDPA's fast
    # kernel, which has no dropout, while the residual stream is still regularized.
    attention_dropout: float | None = None
    tie_embeddings: bool = True
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before RoPE (Qwen3's layout)

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "multiple_of", "max_seq_len")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(f"model.{name} is {value:,}; the limit is {limit:,}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head dim d_model/n_heads = {self.head_dim} must be even for RoPE")
        if self.n_kv_heads is not None and (
            self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads
        ):
            raise ConfigError(
                f"model.n_kv_heads ({self.n_kv_heads}) must divide model.n_heads ({self.n_heads})"
            )
        if self.d_ffn is not None and self.d_ffn <= 0:
            raise ConfigError(f"model.d_ffn must be positive, got {self.d_ffn}")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {value}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError("model.rope_theta and model.norm_eps must be positive")

        self.check_fits_memory()

    def num_weights(self) -> int:
        """Parameters of a WikiMiniModel of this shape (a tied output head counts once)."""
        attention = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.kv_heads)
        feed_forward = 3 * self.d_model * self.ffn_dim
        qk_norms = 2 * self.head_dim if self.qk_norm else 0
        per_layer = attention + feed_forward + 2 * self.d_model + qk_norms
        heads = 1 if self.tie_embeddings else 2
        return heads * self.vocab_size * self.d_model + self.n_layers * per_layer + self.d_model

    def float32_bytes(self) -> int:
        """What building the model allocates: float32 weights and the two RoPE tables."""
        return 4 * (self.num_weights() + 2 * self.max_seq_len * self.head_dim)

    def check_fits_memory(self, memory: int | None = None) -> None:
        """Refuse a shape whose float32 weights alone would not fit in this machine's RAM."""
        memory = physical_memory_bytes() if memory is None else memory
        needed = self.float32_bytes()
        if memory is not None and needed > memory:
            raise ConfigError(
                f"model of {self.num_weights():,} parameters needs {format_bytes(needed)} for its float32 "
                f"weights; this machine has {format_bytes(memory)} (model.vocab_size={self.vocab_size}, "
                f"model.d_model={self.d_model}, model.n_layers={self.n_layers})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ffn is not None:
            return self.d_ffn
        hidden = int(2 * (4 * self.d_model) / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | ModelConfig) -> ModelConfig:
        if isinstance(data, ModelConfig):
            return data
        return dataclass_from_dict(cls, data, section="model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
