"""metrics.jsonl (one JSON record per log step and per evaluation) and the loss-curve PNG.

On resume the file is cut back to the checkpoint's step: records a killed run wrote after its
last checkpoint are replaced by the resumed run's, so the file always reads as one clean run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from src.atomic_files import atomic_output, atomic_write_text


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records (a line cut short by a kill is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step is not None else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Train and validation loss against step; None when there is nothing to plot."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), label="validation", marker="o", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(Path(png_path).parent.name or "training")
    ax.grid(alpha=0.3)
    ax.legend()
    png_path = Path(png_path)
    with atomic_output(png_path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return png_path
