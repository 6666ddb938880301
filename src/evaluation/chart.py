"""A PNG bar chart comparing presets on the main [0, 1] scores (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on servers without a display
import matplotlib.pyplot as plt  # noqa: E402

from src.atomic_files import atomic_output  # noqa: E402
from src.evaluation.selection import quality  # noqa: E402
from src.evaluation.summary import GenerationSummary  # noqa: E402

CHART_SCORES = {
    "grammar raw /10": lambda s: s.grammar_raw / 10,
    "grammar post /10": lambda s: s.grammar_postprocessed / 10,
    "article presence": lambda s: s.article_presence,
    "unique-word ratio": lambda s: s.unique_word_ratio,
    "distinct-2": lambda s: s.distinct_2,
    "EOS share": lambda s: s.eos_rate,
    "quality": quality,
}


def plot_comparison(summaries: Mapping[str, GenerationSummary], path: str | Path, title: str) -> Path:
    """Grouped bars: one group per score, one bar per preset; written atomically."""
    names = list(summaries)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for i, name in enumerate(names):
        values = [score(summaries[name]) for score in CHART_SCORES.values()]
        positions = [x + (i - (len(names) - 1) / 2) * width for x in range(len(CHART_SCORES))]
        ax.bar(positions, values, width, label=name)
    ax.set_xticks(range(len(CHART_SCORES)), list(CHART_SCORES), rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(title)
    ax.legend(title="preset")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
