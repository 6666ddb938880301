"""Which checkpoint files a run keeps in its output_dir, and the CheckpointManager that writes and
restores them.

    checkpoint_latest.pth           every save_interval steps, at the end, on Ctrl-C/SIGTERM;
                                    carries the full training_state for `--resume`
    checkpoint_best_ppl_{ppl}.pth   on a new best validation perplexity; only the best
                                    `keep_best` are kept, so disk use stays bounded

All writes are atomic (src/model/checkpoint.py). Best files are tracked by name in the
training state, so only files this run wrote are ever deleted.

Exact resume: each component of a run (its counters, the optimizer, the GradScaler, the data
position, early stopping, the best files) owns `state_dict`/`load_state_dict`; the manager saves
them all beside the model's weights and every rank's own state (RNG streams, loss accumulator),
and restores them in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from src.config_utils import ConfigError
from src.data.tokenizer import tokenizer_sha256
from src.model.checkpoint import CheckpointError, best_name, load_checkpoint, save_checkpoint
from src.training.distributed import DistInfo, gather_objects

LATEST_NAME = "checkpoint_latest.pth"
TRAINING_STATE_FORMAT = 2  # 2: one entry per resumable component


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from. A fresh run never silently overwrites an earlier one."""
    latest = output_dir / LATEST_NAME
    if resume is None:
        if latest.exists():
            raise ConfigError(
                f"{latest} already exists: pass --resume auto to continue that run, or choose another "
                "training.output_dir (or delete it) to start a new one"
            )
        return None
    if resume == "auto":
        return latest if latest.exists() else None
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"--resume: checkpoint not found: {path}")
    return path


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


class CheckpointManager:
    """Writes checkpoint_latest (weights + every component's state) and the best files, and
    restores a run from a latest checkpoint.

    `states` are the run-wide components by name (saved by rank 0); `rank_state` is what
    differs between ranks (every rank's is gathered into the file). The best files hold
    `best_model`'s weights: the model's, or a weight average's.
    """

    def __init__(self, output_dir: Path, model, tokenizer, config, info: DistInfo,
                 states: dict[str, Stateful], rank_state: Stateful, keep_best: int, best_model=None) -> None:
        self.output_dir, self.model, self.tokenizer, self.config, self.info = output_dir, model, tokenizer, config, info
        self.best_model = best_model or model  # whose weights the best files hold (an average's, if any)
        self.best = BestCheckpoints(output_dir, keep_best)
        self.states = {**states, "best_checkpoints": self.best}
        self.rank_state = rank_state

    def save_latest(self, metrics: dict[str, Any]) -> None:
        """Every rank contributes its own state; rank 0 writes the file."""
        per_rank = gather_objects(self.rank_state.state_dict(), self.info)
        if self.info.is_main:
            state = {name: component.state_dict() for name, component in self.states.items()}
            state.update(format=TRAINING_STATE_FORMAT, ranks=per_rank)
            save_checkpoint(self.output_dir / LATEST_NAME, self.model, self.tokenizer,
                            config=self.config.to_dict(), metrics=metrics, training_state=state)

    def save_best(self, ppl: float, metrics: dict[str, Any]) -> Path | None:
        """A best file for a validation perplexity among the best `keep_best` (None otherwise)."""
        if not (math.isfinite(ppl) and self.best.qualifies(ppl)):
            return None
        return self.best.add(ppl, lambda path: save_checkpoint(path, self.best_model, self.tokenizer,
                                                               config=self.config.to_dict(), metrics=metrics))

    def restore(self, path: Path, warn: Callable[[str], None]) -> None:
        """Load the weights and every component's state from `path`, after checking that the
        checkpoint belongs to this run's model and tokenizer."""
        checkpoint = load_checkpoint(path)
        state = checkpoint.get("training_state")
        if not state:
            raise CheckpointError(f"{path} holds no training state (best checkpoints carry weights only); "
                                  f"resume from {LATEST_NAME}")
        if state.get("format") != TRAINING_STATE_FORMAT:
            raise CheckpointError(f"{path} holds training state in an older layout; start a new run from its "
                                  "weights with --init-from")
        saved, ours = checkpoint["config"], self.config.to_dict()
        changed = sorted(k for k in set(saved["model"]) | set(ours["model"]) if saved["model"].get(k) != ours["model"].get(k))
        if changed:
            raise ConfigError(f"cannot resume {path}: model config differs in {', '.join('model.' + k for k in changed)}")
        if checkpoint.get("tokenizer_sha256") != tokenizer_sha256(self.tokenizer):
            raise ConfigError(f"cannot resume {path}: it was trained with a different tokenizer than {self.config.data.tokenizer}")
        others = [f"{s}.{k}" for s in ours if s != "model" for k in ours[s] if saved.get(s, {}).get(k, ours[s][k]) != ours[s][k]]
        if others:
            warn(f"resuming with changed settings: {', '.join(others)}")
        self.model.load_state_dict(checkpoint["model_state_dict"])
        for name, component in self.states.items():
            try:
                component.load_state_dict(state[name])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"cannot resume {path}: the saved {name} state does not fit ({exc})") from None
        ranks = state["ranks"]
        if len(ranks) != self.info.world_size:
            warn(f"checkpoint was written by {len(ranks)} process(es), resuming with "
                 f"{self.info.world_size}: random streams will differ from an uninterrupted run")
        self.rank_state.load_state_dict(ranks[self.info.rank % len(ranks)])
