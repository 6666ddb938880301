"""Which checkpoint files a run keeps in its output_dir.

    checkpoint_latest.pth           every save_interval steps, at the end, on Ctrl-C/SIGTERM;
                                    carries the full training_state for `--resume`
    checkpoint_best_ppl_{ppl}.pth   on a new best validation perplexity; only the best
                                    `keep_best` are kept, so disk use stays bounded

All writes are atomic (src/model/checkpoint.py). Best files are tracked by name in the
training state, so only files this run wrote are ever deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

LATEST_NAME = "checkpoint_latest.pth"


def best_name(ppl: float) -> str:
    return f"checkpoint_best_ppl_{ppl:.2f}.pth"


class BestCheckpoints:
    def __init__(self, directory: str | Path, keep: int, entries: list | None = None) -> None:
        self.directory = Path(directory)
        self.keep = keep
        # all files this run wrote that still exist (more than `keep` if keep_best was lowered on resume)
        self.entries: list[tuple[float, str]] = sorted((float(p), str(n)) for p, n in (entries or []))

    def qualifies(self, ppl: float) -> bool:
        return len(self.entries) < self.keep or ppl < self.entries[self.keep - 1][0]

    def add(self, ppl: float, save: Callable[[Path], object]) -> Path:
        """Save via `save(path)`, then delete the files that fell out of the best `keep`."""
        path = self.directory / best_name(ppl)
        save(path)
        self.entries = sorted([e for e in self.entries if e[1] != path.name] + [(ppl, path.name)])
        for _, name in self.entries[self.keep :]:
            (self.directory / name).unlink(missing_ok=True)
        self.entries = self.entries[: self.keep]
        return path

    def state(self) -> list[list]:
        return [[ppl, name] for ppl, name in self.entries]
