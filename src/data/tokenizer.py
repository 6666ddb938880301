"""Byte-level BPE tokenizer: training, loading, and the special tokens the project relies on.

The tokenizer is a `tokenizers.Tokenizer` (Hugging Face, Rust). It starts from all 256 byte
values, so any UTF-8 text round-trips exactly and no byte is ever dropped. It carries no
truncation or padding: context length is the model's business, not the tokenizer's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"  # ends every story; id 0
PAD_TOKEN = "<|pad|>"  # padding for batched inference; id 1
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    """The tokenizer path or file is missing or unusable; the message says how."""


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    show_progress: bool = False,
    length: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on an iterator of texts (streamed, never all in memory)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise TokenizerError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens),"
            f" got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from its directory (containing tokenizer.json) or from the file itself."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.exists():
        where = f"directory {path} has no {TOKENIZER_FILE}" if path.is_dir() else f"{path} does not exist"
        raise TokenizerError(
            f"cannot load tokenizer: {where}. Train one with "
            f"`python train_custom_tokenizer.py --output_dir {path}`."
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise TokenizerError(f"cannot load tokenizer from {file}: not a valid tokenizer.json ({exc})") from None


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuild a tokenizer from its tokenizer.json text (as stored inside checkpoints)."""
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:
        raise TokenizerError(f"invalid tokenizer JSON: {exc}") from None


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """Content hash of the tokenizer; cache keys and checkpoints use it to detect a changed one."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def eos_token_id(tokenizer: Tokenizer) -> int | None:
    """Id of the end-of-story token, or None if this tokenizer has none."""
    return tokenizer.token_to_id(EOS_TOKEN)
