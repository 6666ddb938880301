"""The run's data: shuffled training batches and a fixed slice of validation tokens.

Both come from the shared token cache (src/data/cache.py): tokenized once per (source,
tokenizer) and memory-mapped. Under DDP, rank 0 builds a missing cache while the others wait.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from src.config_utils import ConfigError
from src.data.batches import TrainBatches
from src.data.cache import load_or_build_token_cache
from src.data.sources import TextSource, open_source
from src.evaluation.heldout import text_bytes
from src.training.config import DataConfig
from src.training.distributed import DistInfo, barrier


@dataclass
class RunData:
    train: TrainBatches
    train_tokens: int
    train_description: str
    val_tokens: np.ndarray | None  # the (capped) validation tokens every evaluation scores
    val_bytes: int  # UTF-8 bytes of the text behind val_tokens, for bits per byte
    val_description: str | None


def text_sources(config: DataConfig) -> tuple[TextSource, TextSource | None]:
    train = open_source(config.train, split="train")
    val = open_source(config.val, split="validation") if config.val else None
    if val is None and config.val_fraction is not None:
        train, val = train.split_by_hash(config.val_fraction)
    if config.max_train_stories is not None:
        train = train.head(config.max_train_stories)
    if val is not None and config.max_val_stories is not None:
        val = val.head(config.max_val_stories)
    return train, val


def load_run_data(
    config: DataConfig,
    tokenizer: Tokenizer,
    seq_len: int,
    batch_size: int,
    seed: int,
    info: DistInfo,
    max_val_windows: int | None,
) -> RunData:
    train_source, val_source = text_sources(config)

    def caches():
        train = load_or_build_token_cache(train_source, tokenizer, config.cache_dir, show_progress=info.is_main)
        val = None
        if val_source is not None:
            val = load_or_build_token_cache(val_source, tokenizer, config.cache_dir, show_progress=info.is_main)
        return train, val

    if info.is_main:  # build first; the other ranks then only load
        train_cache, val_cache = caches()
        barrier(info)
    else:
        barrier(info)
        train_cache, val_cache = caches()

    try:
        batches = TrainBatches(train_cache.tokens, seq_len, batch_size, seed, info.rank, info.world_size)
    except ValueError as exc:
        raise ConfigError(f"training data too small: {exc}") from None

    val_tokens, val_bytes = None, 0
    if val_cache is not None:
        val_tokens, val_bytes = val_cache.tokens, val_cache.n_bytes
        if max_val_windows is not None and max_val_windows * seq_len + 1 < val_cache.n_tokens:
            val_tokens = val_tokens[: max_val_windows * seq_len + 1]
            val_bytes = text_bytes(tokenizer, val_tokens)  # bytes of the scored part only
        if len(val_tokens) < 2:
            raise ConfigError(f"validation data {val_source.describe()} has fewer than 2 tokens")
    return RunData(
        train=batches,
        train_tokens=train_cache.n_tokens,
        train_description=f"{train_source.describe()}, {train_cache.n_stories:,} stories",
        val_tokens=val_tokens,
        val_bytes=val_bytes,
        val_description=f"{val_source.describe()}, {val_cache.n_stories:,} stories" + (
            f" (the first {len(val_tokens) - 1:,} tokens scored)" if len(val_tokens) < val_cache.n_tokens else "")
        if val_source else None,
    )
