"""Atomic file writes: write next to the target, then os.replace, so readers never see half a file.

A temp file is named after its writer's PID. A process killed mid-write (kill -9, power loss)
leaves its temp file behind; the next write of the same file, or `remove_stale_temps` at a
run's start, deletes temp files whose writer is no longer running.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform that cannot tell: leave its file alone
    return True


def remove_stale_temps(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete temp files in `directory` (of target `name` only, if given) left by dead writers."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for candidate in directory.glob(".*.tmp"):
        match = TEMP_NAME.match(candidate.name)
        if not match or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _running(pid):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
