"""PNG plots of a run's curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(path: Path, curves: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
                title: str, ylabel: str = "accuracy (%)", invert_x: bool = False) -> None:
    """Line plot of named (x, y) curves; y in [0, 1] is drawn as a percentage, AA curves dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, (xs, ys) in curves.items():
        style = "--" if name.lower().startswith("aa") else "-"
        ax.plot(list(xs), [100.0 * float(v) for v in ys], style, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    if invert_x:
        ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
