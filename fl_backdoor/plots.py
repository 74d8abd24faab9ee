"""PNG plots of a run's curves (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the headless Agg backend, imported when a plot is drawn: a client process, which
    draws none, does not pay for the import at every start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
                title: str, ylabel: str = "accuracy (%)", invert_x: bool = False) -> None:
    """Line plot of named (x, y) curves; y in [0, 1] is drawn as a percentage, AA curves dashed."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0), dpi=120)
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
    save_figure(fig, path)


def plot_bars(path: Path, groups: Sequence[str], panels: dict[str, dict[str, Sequence[float | None]]], title: str,
              ylabel: str = "%") -> None:
    """Grouped bar chart, one panel per entry of ``panels`` ({series: one value per group}, None = no bar)."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(max(6.0, 0.55 * len(groups) * len(panels) + 3), 3.8),
                             dpi=120, squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [float("nan") if v is None else float(v) for v in values], width, label=name)
        crowded = len(groups) > 6 or max((len(g) for g in groups), default=0) > 10
        ax.set_xticks(range(len(groups)), groups, rotation=30 if crowded else 0, ha="right" if crowded else "center",
                      fontsize=8)
        ax.set_title(panel)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_scatter(path: Path, points: Mapping[str, tuple[float, float]], *, xlabel: str, ylabel: str,
                 title: str) -> None:
    """Labelled points "group | setting": one marker per setting, one colour per group."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    groups = list(dict.fromkeys(name.split(" | ")[0] for name in points))
    settings = list(dict.fromkeys(name.split(" | ")[-1] for name in points))
    markers = "osD^v<>pPX*h"
    colours = plt.get_cmap("tab20")
    for name, (x, y) in points.items():
        group, setting = name.split(" | ")[0], name.split(" | ")[-1]
        ax.scatter([x], [y], color=colours(groups.index(group) % 20), marker=markers[settings.index(setting) % 12])
    for i, group in enumerate(groups):
        ax.scatter([], [], color=colours(i % 20), label=group)
    for i, setting in enumerate(settings):
        ax.scatter([], [], color="grey", marker=markers[i % 12], label=setting)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="best")
    save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> None:
    """Lay out, write atomically (a reader never sees half a PNG) and close."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    pyplot().close(fig)
    tmp.replace(path)
