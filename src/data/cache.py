"""Tokenized cache: a source's stories, tokenized once, as one flat memory-mapped array.

Layout: `<name>.bin` holds the tokens of every story followed by EOS, flat, as uint16 (uint32
when the vocabulary needs it); for a model whose stories start after another token (llama2.c
models: BOS), `story_start_id` puts that token before every story instead, as they were trained; `<name>.json` beside it records how it was made (format version,
tokenizer sha256, source fingerprint, dtype, token / story / UTF-8 byte counts). The file name
carries the tokenizer hash and the source fingerprint, so a new tokenizer or changed data never
meets a stale cache. A cache whose sidecar is missing or disagrees, whose size is not
n_tokens * itemsize, or whose contents no longer match the sidecar's sha256 (a file of the right
size with the wrong tokens would otherwise crash training with out-of-range ids), is rebuilt
(with a warning), never used.

The build streams: chunks of stories go through `Tokenizer.encode_batch` (parallel in Rust) and
are appended to a temp file that is renamed into place at the end, so memory stays flat as the
corpus grows and an interrupted build leaves no half cache. A chunk is bounded in UTF-8 bytes,
not characters: a byte is at most one token, and the encodings of a call cost tens of bytes per
token, so text of many-byte characters (emoji, CJK) cannot make a chunk's encodings large.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from src.atomic_files import atomic_output, atomic_write_text
from src.data.sources import TextSource, open_source
from src.data.tokenizer import TokenizerError, eos_token_id, tokenizer_sha256

CACHE_FORMAT_VERSION = 2  # 2: the sidecar records the tokens' sha256
DEFAULT_CACHE_DIR = "data/cache"
STORIES_PER_CHUNK = 2048  # stories per encode_batch call: big enough to keep all cores busy
CHUNK_BYTES = 1 << 20  # ...and at most about this much UTF-8 text per call (so at most as many tokens)


def chunks(stories: Iterator[str], max_stories: int, max_bytes: int = CHUNK_BYTES) -> Iterator[tuple[list[str], int]]:
    """(stories, their UTF-8 bytes): consecutive stories, at most `max_stories` of them and
    about `max_bytes` (one story more at most) per chunk."""
    chunk, size = [], 0
    for story in stories:
        chunk.append(story)
        size += len(story.encode("utf-8"))
        if len(chunk) >= max_stories or size >= max_bytes:
            yield chunk, size
            chunk, size = [], 0
    if chunk:
        yield chunk, size

logger = logging.getLogger(__name__)


class CacheError(ValueError):
    """A token cache is missing, truncated or does not match its tokenizer / source."""


@dataclass(frozen=True)
class TokenCache:
    """A built cache. `tokens` is a read-only memmap: pages load on demand, nothing is copied."""

    tokens: np.memmap
    n_tokens: int
    n_stories: int
    n_bytes: int  # UTF-8 bytes of the story text (no separators): the denominator of bits per byte
    path: Path
    meta: dict[str, Any]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def cache_paths(source: TextSource, tokenizer: Tokenizer, cache_dir: str | Path,
                story_start_id: int | None = None) -> tuple[Path, Path]:
    """(tokens .bin, sidecar .json) for this source and tokenizer: the key is both hashes (and
    the story start token, when stories are preceded by one instead of followed by EOS)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.describe().split(" ")[0]).name)[:40].strip("._") or "data"
    name = f"{slug}-src{source.fingerprint()[:12]}-tok{tokenizer_sha256(tokenizer)[:12]}"
    if story_start_id is not None:
        name += f"-start{story_start_id}"
    cache_dir = Path(cache_dir)
    return cache_dir / f"{name}.bin", cache_dir / f"{name}.json"


def load_or_build_token_cache(
    source: TextSource | str,
    tokenizer: Tokenizer,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    show_progress: bool = True,
    stories_per_chunk: int = STORIES_PER_CHUNK,
    story_start_id: int | None = None,
) -> TokenCache:
    """The cache for (source, tokenizer): loaded if present and valid, else built first.

    `story_start_id`: put this token before every story instead of EOS after it (see above)."""
    source = open_source(source)
    bin_path, meta_path = cache_paths(source, tokenizer, cache_dir, story_start_id)
    if bin_path.exists() or meta_path.exists():
        try:
            return load_token_cache(bin_path, tokenizer, source, story_start_id)
        except CacheError as exc:
            logger.warning("rebuilding token cache: %s", exc)
            meta_path.unlink(missing_ok=True)
    build_token_cache(source, tokenizer, bin_path, show_progress, stories_per_chunk, story_start_id)
    return load_token_cache(bin_path, tokenizer, source, story_start_id)


def load_token_cache(
    bin_path: str | Path, tokenizer: Tokenizer | None = None, source: TextSource | None = None,
    story_start_id: int | None = None,
) -> TokenCache:
    """Open a built cache, checking the sidecar (and, if given, the tokenizer and source)."""
    bin_path = Path(bin_path)
    meta_path = bin_path.with_suffix(".json")
    if not meta_path.exists():
        raise CacheError(f"{bin_path}: sidecar {meta_path.name} is missing (interrupted build?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        n_tokens, dtype = int(meta["n_tokens"]), np.dtype(meta["dtype"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{meta_path}: unreadable sidecar ({exc})") from None
    expected = {"format_version": CACHE_FORMAT_VERSION}
    if tokenizer is not None:
        expected["tokenizer_sha256"] = tokenizer_sha256(tokenizer)
    if source is not None:
        expected["source_fingerprint"] = source.fingerprint()
    if story_start_id is not None:
        expected["story_start_token_id"] = story_start_id
    for key, value in expected.items():
        if meta.get(key) != value:
            raise CacheError(f"{bin_path}: {key} is {meta.get(key)!r}, expected {value!r}")
    size = bin_path.stat().st_size if bin_path.exists() else None
    if size != n_tokens * dtype.itemsize or n_tokens == 0:
        raise CacheError(
            f"{bin_path}: {size} bytes on disk, sidecar says {n_tokens} tokens x {dtype.itemsize} bytes (truncated?)"
        )
    digest = file_sha256(bin_path)
    if digest != meta.get("sha256"):
        raise CacheError(f"{bin_path}: contents do not match the sidecar's sha256 (corrupted or overwritten)")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n_tokens,))
    return TokenCache(tokens, n_tokens, int(meta["n_stories"]), int(meta["n_bytes"]), bin_path, meta)


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(block):
            digest.update(data)
    return digest.hexdigest()


def chunk_tokens(encode, chunk: list[str], dtype: np.dtype, eos: int | None, story_start_id: int | None) -> np.ndarray:
    """A chunk's stories as one flat token array, each story followed by EOS (or preceded by
    `story_start_id`). The encodings die on return, before the next chunk is encoded."""
    encodings = encode(chunk, add_special_tokens=False)
    if story_start_id is None:
        story_ids = itertools.chain.from_iterable((e.ids, (eos,)) for e in encodings)
    else:
        story_ids = itertools.chain.from_iterable(((story_start_id,), e.ids) for e in encodings)
    return np.fromiter(itertools.chain.from_iterable(story_ids), dtype=dtype)


def build_token_cache(
    source: TextSource,
    tokenizer: Tokenizer,
    bin_path: str | Path,
    show_progress: bool = True,
    stories_per_chunk: int = STORIES_PER_CHUNK,
    story_start_id: int | None = None,
) -> dict[str, Any]:
    """Tokenize every story + EOS (or, with `story_start_id`, that token + story) into
    `bin_path` (atomically) and write its sidecar last."""
    bin_path = Path(bin_path)
    eos = eos_token_id(tokenizer)
    if eos is None and story_start_id is None:
        raise TokenizerError("the tokenizer has no <|endoftext|> token; the cache needs one after each story")
    vocab_size = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab_size)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: skips offsets
    n_tokens = n_stories = n_bytes = 0
    digest = hashlib.sha256()
    start = time.perf_counter()
    progress = tqdm(
        total=source.total_bytes(),
        unit="B",
        unit_scale=True,
        desc=f"tokenizing {source.describe()}",
        disable=not show_progress,
    )
    with progress, atomic_output(bin_path) as tmp, open(tmp, "wb") as out:
        for chunk, chunk_bytes in chunks(source.stories(), stories_per_chunk):
            ids = chunk_tokens(encode, chunk, dtype, eos, story_start_id)
            ids.tofile(out)
            digest.update(ids.tobytes())
            n_tokens += len(ids)
            n_stories += len(chunk)
            n_bytes += chunk_bytes
            progress.update(chunk_bytes)
        out.flush()
    meta = {
        "format_version": CACHE_FORMAT_VERSION,
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "vocab_size": vocab_size,
        "eos_token_id": eos,
        **({} if story_start_id is None else {"story_start_token_id": story_start_id}),
        "source": source.describe(),
        "source_fingerprint": source.fingerprint(),
        "dtype": dtype.name,
        "n_tokens": n_tokens,
        "n_stories": n_stories,
        "n_bytes": n_bytes,
        "sha256": digest.hexdigest(),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    atomic_write_text(bin_path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return meta
