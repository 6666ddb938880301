"""Which checkpoint files a run keeps in its output_dir.

    checkpoint_latest.pth           every save_interval steps, at the end, on Ctrl-C/SIGTERM;
                                    carries the full training_state for `--resume`
    checkpoint_best_ppl_{ppl}.pth   on a new best validation perplexity; only the best
                                    `keep_best` are kept, so disk use stays bounded

All writes are atomic (src/model/checkpoint.py). Best files are tracked by name in the
training state, so only files this run wrote are ever deleted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from src.model.checkpoint import best_name

LATEST_NAME = "checkpoint_latest.pth"


class BestCheckpoints:
    def __init__(self, directory: str | Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep
        # all files this run wrote that still exist (more than `keep` if keep_best was lowered on resume)
        self.entries: list[tuple[float, str]] = []

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

    def state_dict(self) -> dict[str, list]:
        return {"entries": [[ppl, name] for ppl, name in self.entries]}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.entries = sorted((float(p), str(n)) for p, n in state["entries"])


class EarlyStopping:
    """Validation bookkeeping: the best loss so far, evaluations since it last improved, and
    the latest scores (which checkpoints record as their metrics)."""

    def __init__(self, patience: int | None, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best_loss = math.inf
        self.evals_without_improvement = 0
        self.last_eval: dict[str, float] = {}

    def update(self, scores: dict[str, float]) -> bool:
        """Record an evaluation; True when it improved on the best loss."""
        self.last_eval = dict(scores)
        improved = scores["val_loss"] < self.best_loss - self.min_delta
        if improved:
            self.best_loss, self.evals_without_improvement = scores["val_loss"], 0
        else:
            self.evals_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evals_without_improvement >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "evals_without_improvement": self.evals_without_improvement,
                "last_eval": dict(self.last_eval)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = float(state["best_loss"])
        self.evals_without_improvement = int(state["evals_without_improvement"])
        self.last_eval = dict(state["last_eval"])
