"""Train a tokenizer on a text source and save it: what `train_custom_tokenizer.py` runs.

Stories stream from the source straight into the Rust BPE trainer (never all in memory). A
small sample of them (the first ~1M characters) is kept to report tokens per character.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from src.data.sources import DEFAULT_HF_DATASET, open_source
from src.data.tokenizer import (
    TokenizerError,
    check_vocab_size,
    save_tokenizer,
    tokenizer_sha256,
    train_bpe_tokenizer,
)

SAMPLE_CHARS = 1_000_000  # text kept aside to measure tokens per character


@dataclass
class TokenizerTrainingConfig:
    output_dir: str
    vocab_size: int = 10_000
    data: list[str] = field(default_factory=lambda: [DEFAULT_HF_DATASET])
    split: str = "train"  # for Hugging Face sources that do not name a split
    max_samples: int | None = 100_000  # stories; None reads the whole source
    min_frequency: int = 2
    show_progress: bool = True


@dataclass
class TokenizerTrainingResult:
    output_dir: Path
    vocab_size: int
    n_stories: int
    n_chars: int
    seconds: float
    tokens_per_char: float
    sha256: str


def check_config(config: TokenizerTrainingConfig) -> Path:
    """The output directory, once every setting is known to be usable."""
    check_vocab_size(config.vocab_size)
    if config.max_samples is not None and config.max_samples < 1:
        raise TokenizerError(f"max_samples must be at least 1, got {config.max_samples}")
    if config.min_frequency < 1:
        raise TokenizerError(f"min_frequency must be at least 1, got {config.min_frequency}")
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise TokenizerError(f"output_dir {output_dir} exists and is not a directory")
    return output_dir


def train_tokenizer(config: TokenizerTrainingConfig) -> TokenizerTrainingResult:
    """Check the arguments, stream the source into the trainer, save the tokenizer directory."""
    output_dir = check_config(config)
    whole = open_source(config.data, split=config.split)
    source = whole.head(config.max_samples)
    file_bytes = whole.total_bytes()  # local files: the bar counts bytes read of them; else stories

    counts = {"stories": 0, "chars": 0}
    sample: list[str] = []

    def counted_stories() -> Iterator[str]:
        progress = tqdm(total=file_bytes or config.max_samples, unit="B" if file_bytes else " stories",
                        unit_scale=bool(file_bytes), desc="reading", disable=not config.show_progress)
        with progress:
            for story in source.stories():
                counts["stories"] += 1
                counts["chars"] += len(story)
                if counts["chars"] <= SAMPLE_CHARS:
                    sample.append(story)
                progress.update(len(story.encode("utf-8")) if file_bytes else 1)  # separators aside
                yield story
            if file_bytes and (config.max_samples is None or counts["stories"] < config.max_samples):
                progress.update(file_bytes - progress.n)  # the whole file was read, separators too

    start = time.perf_counter()
    tokenizer = train_bpe_tokenizer(counted_stories(), config.vocab_size, config.min_frequency)
    seconds = time.perf_counter() - start

    sample = sample or ["."]
    n_sample_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(sample, add_special_tokens=False))
    tokens_per_char = n_sample_tokens / max(1, sum(map(len, sample)))
    save_tokenizer(
        tokenizer,
        output_dir,
        metadata={
            "requested_vocab_size": config.vocab_size,
            "min_frequency": config.min_frequency,
            "data_source": source.describe(),
            "data_fingerprint": source.fingerprint(),
            "samples": counts["stories"],
            "chars": counts["chars"],
            "tokens_per_char": round(tokens_per_char, 5),
            "training_seconds": round(seconds, 3),
        },
    )
    return TokenizerTrainingResult(
        output_dir=output_dir,
        vocab_size=tokenizer.get_vocab_size(),
        n_stories=counts["stories"],
        n_chars=counts["chars"],
        seconds=seconds,
        tokens_per_char=tokens_per_char,
        sha256=tokenizer_sha256(tokenizer),
    )
