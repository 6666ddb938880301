"""Model hyper-parameters as a typed dataclass, stored in checkpoints as a plain dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from src.config_utils import ConfigError, dataclass_from_dict


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
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "multiple_of", "max_seq_len")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
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
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ConfigError("model.rope_theta and model.norm_eps must be positive")

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
