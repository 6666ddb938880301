"""Text sources: one way to name the stories a tokenizer or a model is trained and measured on.

A source spec is a string:

    roneneldan/TinyStories            a Hugging Face dataset (split from the `split` argument)
    roneneldan/TinyStories:validation a Hugging Face dataset and split (`hf:` prefix also accepted)
    path/to/TinyStories-train.txt     the dataset's own text format: each story, then `<|endoftext|>`
    path/to/data00.json, x.jsonl      records with a `text` or `story` field (llama2.c's shards)
    path/to/folder, "shards/*.json"   every .txt/.jsonl/.json file below a folder, or matching a glob

Stories are read lazily (a .txt line by line, a .json array record by record), stripped, and
empty ones skipped. Every source has a stable `fingerprint()` for cache keys: path, size and
mtime_ns of each local file, or dataset name and split on the hub. A source that cannot be read,
or yields no story at all, raises `DataSourceError` with a message that says which and why.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import ijson

from src.data.tokenizer import EOS_TOKEN

DEFAULT_HF_DATASET = "roneneldan/TinyStories"  # splits: "train", "validation"
TEXT_FIELDS = ("text", "story")  # checked in this order
FILE_SUFFIXES = (".txt", ".jsonl", ".json")
_HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_GLOB_CHARS = re.compile(r"[*?\[]")
HUB_HOST = ("huggingface.co", 443)
HUB_CONNECT_TIMEOUT_S = 3.0
_hub_reachability: tuple[bool, str] | None = None  # found once per process


# A "story" longer than this (a TinyStories story is ~1,000 characters; a model's context ~2,000)
# means the separators are missing: it is passed on in pieces of about this size, with a warning,
# so reading and tokenizing stay in bounded memory whatever the text.
MAX_STORY_CHARS = 1 << 16


class DataSourceError(ValueError):
    """A text source is missing, unreadable, malformed or empty; the message says which."""


class DataSourceWarning(UserWarning):
    """A source was read, but not the way its author likely meant (e.g. missing separators)."""


def warn_long_story(where: str) -> None:
    """Say (once per source) that a story was too long to be one, and is read in pieces."""
    warnings.warn(f"{where}: a story runs past {MAX_STORY_CHARS:,} characters, far longer than a model's "
                  f"context; it is read in pieces of that size (are the {EOS_TOKEN} separators missing?)",
                  DataSourceWarning, stacklevel=3)


def split_long_story(story: str, limit: int = MAX_STORY_CHARS) -> list[str]:
    """`story` in pieces of at most `limit` characters, cut at whitespace where there is some."""
    pieces = []
    while len(story) > limit:
        cut = story.rfind(" ", limit // 2, limit)
        cut = limit if cut < 0 else cut + 1
        pieces.append(story[:cut])
        story = story[cut:]
    pieces.append(story)
    return pieces


# ---------------------------------------------------------------------------------------------
# Readers: one generator per file format, each yielding raw (unstripped) story strings.


def _read_txt(file: Path) -> Iterator[str]:
    """The TinyStories .txt format: story lines, then a line `<|endoftext|>`. Read a line at a
    time, and a line longer than MAX_STORY_CHARS in pieces, so memory stays bounded."""
    lines: list[str] = []
    size = 0
    with _reading(file) as f:
        while line := f.readline(MAX_STORY_CHARS):
            if line.strip() == EOS_TOKEN:
                yield "".join(lines)
                lines, size = [], 0
                continue
            lines.append(line)
            size += len(line)
            if size > MAX_STORY_CHARS:  # no separator in sight: hand on whole pieces, keep the rest
                warn_long_story(str(file))
                *pieces, rest = split_long_story("".join(lines))
                yield from pieces
                lines, size = [rest], len(rest)
    if lines:  # a last story without its closing separator still counts
        yield "".join(lines)


def _read_jsonl(file: Path) -> Iterator[str]:
    with _reading(file) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataSourceError(f"{file}:{line_no}: invalid JSON ({exc.msg})") from None
            yield _story_field(record, f"{file}:{line_no}")


def _read_json(file: Path) -> Iterator[str]:
    """A JSON array of records, streamed a record at a time by ijson, or a single record."""
    with _reading(file, binary=True) as f:
        first = f.read(4096).lstrip()[:1]
        f.seek(0)
        try:
            records = ijson.items(f, "item") if first == b"[" else [json.load(f)] if first else []
            for index, record in enumerate(records):
                yield _story_field(record, f"{file} record {index}")
        except (ijson.JSONError, json.JSONDecodeError) as exc:
            detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise DataSourceError(f"{file}: invalid JSON ({detail.splitlines()[0][:200]})") from None


def _story_field(record: Any, where: str) -> str:
    if isinstance(record, dict):
        for field in TEXT_FIELDS:
            value = record.get(field)
            if isinstance(value, str):
                return value
        keys = ", ".join(map(repr, list(record)[:8])) or "none"
        raise DataSourceError(f"{where}: record has no 'text' or 'story' string field (keys: {keys})")
    raise DataSourceError(f"{where}: expected an object with a 'text' or 'story' field, got {type(record).__name__}")


@contextmanager
def _reading(file: Path, binary: bool = False) -> Iterator[IO]:
    """The file opened for reading (UTF-8 text unless `binary`): failing to open or to decode it
    is one DataSourceError, wherever the reading happens."""
    try:
        f = open(file, "rb") if binary else open(file, encoding="utf-8")
    except OSError as exc:
        raise DataSourceError(f"cannot read {file}: {exc.strerror or exc}") from None
    with f:
        try:
            yield f
        except UnicodeDecodeError as exc:
            raise DataSourceError(f"{file} is not valid UTF-8 ({exc.reason} at byte {exc.start} of a block)") from None


def _stat(file: Path) -> os.stat_result:
    try:
        return file.stat()
    except OSError as exc:
        raise DataSourceError(f"cannot read {file}: {exc.strerror or exc}") from None


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".json": _read_json}


# ---------------------------------------------------------------------------------------------
# Source parts: local files, or a Hugging Face dataset split.


@dataclass(frozen=True)
class LocalFiles:
    """Local .txt/.jsonl/.json files, resolved from one path, folder or glob."""

    spec: str
    files: tuple[Path, ...]

    def raw_stories(self) -> Iterator[str]:
        for file in self.files:
            yield from _READERS[file.suffix.lower()](file)

    def fingerprint(self) -> str:
        parts = []  # the files themselves, not the spelling of the spec: ./a.txt and a.txt agree
        for file in self.files:
            stat = _stat(file)
            parts.append(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
        return "\n".join(parts)

    def total_bytes(self) -> int | None:
        return sum(_stat(file).st_size for file in self.files)

    def describe(self) -> str:
        return self.spec if len(self.files) == 1 else f"{self.spec} ({len(self.files)} files)"


def hub_offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable() -> tuple[bool, str]:
    """(can the Hugging Face hub be reached, why not): one short connect, once per process, so
    that a machine without network learns it in seconds instead of after minutes of retries."""
    global _hub_reachability
    if _hub_reachability is not None:  # (once found unreachable, HF_HUB_OFFLINE is ours: see _go_offline)
        return _hub_reachability
    if hub_offline_requested():
        return False, "is disabled by HF_HUB_OFFLINE"
    try:
        with socket.create_connection(HUB_HOST, timeout=HUB_CONNECT_TIMEOUT_S):
            _hub_reachability = True, "is reachable"
    except OSError as exc:
        _hub_reachability = False, f"is not reachable ({exc.strerror or type(exc).__name__})"
    return _hub_reachability


def _go_offline() -> None:
    """Make `datasets` use only its local cache (HF_HUB_OFFLINE semantics): a dataset read
    before still loads, anything else fails at once."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module, name in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            setattr(loaded, name, True)


@dataclass(frozen=True)
class HubDataset:
    """A Hugging Face dataset split, streamed through `datasets` (nothing downloaded up front)."""

    name: str
    split: str

    def raw_stories(self) -> Iterator[str]:
        where = f"Hugging Face dataset {self.name!r} split {self.split!r}"
        reachable, why = hub_reachable()
        if not reachable:
            _go_offline()
        try:
            import datasets

            rows = iter(datasets.load_dataset(self.name, split=self.split, streaming=True))
            for index, row in enumerate(rows):
                yield _story_field(row, f"{where} row {index}")
        except DataSourceError:
            raise
        except Exception as exc:  # network, unknown dataset or split, ...: one clear line
            message = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
            if not reachable:
                message = f"the Hugging Face hub {why} and the dataset is not in the local cache"
            raise DataSourceError(
                f"cannot read {where}: {message}. Without network access, use local files instead, e.g."
                " train.py --set data.train='path/to/train*.txt' --set data.val=path/to/valid.txt (other"
                " commands: --data path/to/valid.txt), or the bundled stories: --config config/smoke.yaml"
            ) from None

    def fingerprint(self) -> str:
        return f"hf:{self.name}:{self.split}"

    def total_bytes(self) -> int | None:
        return None

    def describe(self) -> str:
        return f"hf:{self.name}:{self.split}"


SourcePart = LocalFiles | HubDataset


# ---------------------------------------------------------------------------------------------
# TextSource: what the tokenizer trainer, the cache and the trainer take.


def story_hash_fraction(story: str) -> float:
    """A stable number in [0, 1) from the story text, for train / held-out splits."""
    digest = hashlib.blake2b(story.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_held_out(story: str, fraction: float) -> bool:
    """True for about `fraction` of all stories, always the same ones whatever the order."""
    return story_hash_fraction(story) < fraction


@dataclass(frozen=True)
class TextSource:
    """One or more source parts read in order, optionally split by story hash and capped."""

    parts: tuple[SourcePart, ...]
    held_out_fraction: float | None = None  # with `keep`, selects one side of a hash split
    keep: str = "all"  # "all", "train" (not held out) or "held_out"
    max_stories: int | None = None

    def stories(self) -> Iterator[str]:
        """Stripped, non-empty stories, lazily. Raises DataSourceError if a part yields none."""
        count = 0
        for part in self.parts:
            found = 0
            for raw in self._bounded(part):
                story = raw.strip()
                if not story:
                    continue
                found += 1
                if self.keep != "all" and is_held_out(story, self.held_out_fraction) != (self.keep == "held_out"):
                    continue
                if self.max_stories is not None and count >= self.max_stories:
                    return
                count += 1
                yield story
            if found == 0:
                raise DataSourceError(f"{part.describe()} holds no stories (empty, or only separators)")
        if count == 0 and self.keep != "all":
            raise DataSourceError(f"{self.describe()}: the hash split left no stories")

    @staticmethod
    def _bounded(part: SourcePart) -> Iterator[str]:
        """The part's raw stories, each at most MAX_STORY_CHARS long."""
        for raw in part.raw_stories():
            if len(raw) <= MAX_STORY_CHARS:
                yield raw
            else:
                warn_long_story(part.describe())
                yield from split_long_story(raw)

    def split_by_hash(self, held_out_fraction: float) -> tuple[TextSource, TextSource]:
        """(train, held_out) views of this source: a stable split by a hash of each story's text."""
        if not 0.0 < held_out_fraction < 1.0:
            raise DataSourceError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
        if self.keep != "all":
            raise DataSourceError("this source is already one side of a hash split")
        train = replace(self, held_out_fraction=held_out_fraction, keep="train")
        return train, replace(train, keep="held_out")

    def head(self, max_stories: int | None) -> TextSource:
        """The first `max_stories` stories only (None: all)."""
        if max_stories is not None and max_stories < 1:
            raise DataSourceError(f"max_stories must be at least 1, got {max_stories}")
        return replace(self, max_stories=max_stories)

    def fingerprint(self) -> str:
        """A stable hex digest of everything that decides which stories come out."""
        text = "\n".join(part.fingerprint() for part in self.parts)
        text += f"\nkeep={self.keep} held_out={self.held_out_fraction} max={self.max_stories}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def total_bytes(self) -> int | None:
        """Bytes on disk of the local files (a progress-bar estimate), None if unknown."""
        sizes = [part.total_bytes() for part in self.parts]
        if any(size is None for size in sizes) or self.max_stories is not None:
            return None
        return sum(sizes)

    def describe(self) -> str:
        text = " + ".join(part.describe() for part in self.parts)
        if self.keep != "all":
            text += f" [{self.keep}, held-out fraction {self.held_out_fraction}]"
        if self.max_stories is not None:
            text += f" [at most {self.max_stories:,} stories]"
        return text


def open_source(spec: str | Path | Sequence[str | Path] | TextSource, split: str = "train") -> TextSource:
    """Resolve one spec, or several read in order, into a TextSource (local files checked now).

    `split` applies to Hugging Face specs that do not name their own (`name:split`).
    """
    if isinstance(spec, TextSource):
        return spec
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise DataSourceError("no data source given")
    return TextSource(tuple(_resolve_part(str(one), split) for one in specs))


def _resolve_part(spec: str, split: str) -> SourcePart:
    spec = spec.strip()
    if not spec:
        raise DataSourceError("empty data source name")
    if spec.startswith("hf:"):
        return _hub_dataset(spec[3:], split)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = _data_files_under(path)
        if not files:
            raise DataSourceError(f"folder {spec} holds no {'/'.join(FILE_SUFFIXES)} files")
        return LocalFiles(spec, files)
    if path.is_file():
        return LocalFiles(spec, (_checked_file(path),))
    if _GLOB_CHARS.search(spec):
        files: list[Path] = []
        for match in sorted(glob.glob(os.path.expanduser(spec), recursive=True)):
            match_path = Path(match)
            files.extend(_data_files_under(match_path) if match_path.is_dir() else [match_path])
        files = [f for f in files if f.suffix.lower() in FILE_SUFFIXES]
        if not files:
            raise DataSourceError(f"no {'/'.join(FILE_SUFFIXES)} files match {spec}")
        return LocalFiles(spec, tuple(files))
    # "owner/name" that is not on disk is a hub dataset, unless it clearly meant a local path
    looks_like_path = (
        path.suffix.lower() in FILE_SUFFIXES
        or spec.startswith((".", "/", "~"))
        or (len(path.parts) > 1 and path.parent.exists())
    )
    if looks_like_path or not _HF_NAME.match(spec.split(":", 1)[0]):
        raise DataSourceError(f"data source {spec} does not exist")
    return _hub_dataset(spec, split)


def _hub_dataset(spec: str, split: str) -> HubDataset:
    name, _, own_split = spec.partition(":")
    if not _HF_NAME.match(name):
        raise DataSourceError(f"not a Hugging Face dataset name: {name!r}")
    return HubDataset(name, own_split or split)


def _data_files_under(folder: Path) -> tuple[Path, ...]:
    return tuple(
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix.lower() in FILE_SUFFIXES and not path.name.startswith(".")
    )


def _checked_file(path: Path) -> Path:
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataSourceError(f"{path}: unsupported file type (expected {', '.join(FILE_SUFFIXES)})")
    return path

