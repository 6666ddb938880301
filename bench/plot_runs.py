#!/usr/bin/env python3
"""Training runs side by side: validation bits per byte against CPU minutes, where a minute of
evaluation counts as much as a minute of training, from each run's metrics.jsonl. Writes a PNG
and prints a Markdown table.

    python -m bench.plot_runs checkpoints/recipes/r3_6m_drop_180min_s1337 \
        checkpoints/recipes/r3_12m_drop_180min_s1337 --output docs/r3_bpb.png

A run may span several `--resume auto` sessions: its records carry the training and evaluation
seconds summed over all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from src.atomic_files import atomic_output


def evaluations(run_dir: Path) -> list[tuple[float, float]]:
    """(CPU minutes so far, val bits per byte) at each evaluation of a run."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no metrics.jsonl (not a training run's output_dir)")
    points = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if "val_bpb" in record and "eval_seconds" in record:
                points.append(((record["train_seconds"] + record["eval_seconds"]) / 60, record["val_bpb"]))
    if not points:
        raise ValueError(f"{run_dir}: no evaluation records with their CPU time")
    return points


def table(runs: dict[str, list[tuple[float, float]]]) -> str:
    rows = ["| run | evaluations | best bits/byte | at CPU minutes | last bits/byte | CPU minutes in all |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, points in runs.items():
        best = min(points, key=lambda p: p[1])
        rows.append(f"| {name} | {len(points)} | {best[1]:.4f} | {best[0]:.1f} | {points[-1][1]:.4f} | "
                    f"{points[-1][0]:.1f} |")
    return "\n".join(rows)


def plot(runs: dict[str, list[tuple[float, float]]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, points in runs.items():
        axes.plot([m for m, _ in points], [b for _, b in points], marker=".", label=name)
    axes.set_xlabel("CPU minutes (training + evaluation)")
    axes.set_ylabel("validation bits per byte")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_output(output) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="training output directories")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        runs = {run.name: evaluations(run) for run in args.runs}
    except (ValueError, OSError) as exc:
        print(f"plot_runs: error: {exc}", file=sys.stderr)
        return 2
    plot(runs, args.output)
    print(table(runs))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
