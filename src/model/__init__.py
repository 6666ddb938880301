"""The Llama-2-style WikiMiniModel, its config, KV cache and checkpoint format."""

from src.model.config import ModelConfig
from src.model.transformer_block import WikiMiniModel

__all__ = ["ModelConfig", "WikiMiniModel"]
