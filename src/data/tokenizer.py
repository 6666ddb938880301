"""Byte-level BPE tokenizer: training, loading, and the special tokens the project relies on.

The tokenizer is a `tokenizers.Tokenizer` (Hugging Face, Rust). It starts from all 256 byte
values, so any UTF-8 text round-trips exactly and no byte is ever dropped. It carries no
truncation or padding: context length is the model's business, not the tokenizer's.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from src.atomic_files import atomic_write_text

EOS_TOKEN = "<|endoftext|>"  # ends every story; id 0
PAD_TOKEN = "<|pad|>"  # padding for batched inference; id 1
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
TOKENIZER_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"  # what transformers.AutoTokenizer reads besides tokenizer.json
METADATA_FILE = "tokenizer_meta.json"  # vocab size, data source, samples, sha256 of tokenizer.json


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
    check_vocab_size(vocab_size)
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


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {vocab_size}"
        )


def save_tokenizer(tokenizer: Tokenizer, output_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write tokenizer.json, the AutoTokenizer config and a metadata file, each atomically.

    tokenizer.json holds exactly `tokenizer.to_str()`, so the sha256 of the file equals
    `tokenizer_sha256(tokenizer)` and cache keys agree whether a tokenizer came from disk or memory.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise TokenizerError(f"output_dir {output_dir} exists and is not a directory")
    for token, expected_id in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS))):
        if tokenizer.token_to_id(token) != expected_id:
            raise TokenizerError(f"{token} must have id {expected_id}, has {tokenizer.token_to_id(token)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / TOKENIZER_FILE, tokenizer.to_str())
    atomic_write_text(output_dir / HF_CONFIG_FILE, _hf_tokenizer_config(tokenizer))
    meta = {
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_token": EOS_TOKEN,
        "eos_token_id": tokenizer.token_to_id(EOS_TOKEN),
        "pad_token": PAD_TOKEN,
        "pad_token_id": tokenizer.token_to_id(PAD_TOKEN),
        **(metadata or {}),
        "tokenizer_json_sha256": tokenizer_sha256(tokenizer),
    }
    atomic_write_text(output_dir / METADATA_FILE, json.dumps(meta, indent=2) + "\n")
    return output_dir


def _hf_tokenizer_config(tokenizer: Tokenizer) -> str:
    """tokenizer_config.json as transformers writes it, with eos/pad set.

    The class is pinned to PreTrainedTokenizerFast, which transformers 4.x and 5.x both load.
    """
    from transformers import PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    with tempfile.TemporaryDirectory() as tmp:
        hf_tokenizer.save_pretrained(tmp)
        config = json.loads((Path(tmp) / HF_CONFIG_FILE).read_text(encoding="utf-8"))
    config.pop("backend", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    return json.dumps(config, indent=2) + "\n"


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
