"""Reading finished sweep runs and writing the paper's tables and plots from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fl_backdoor.plots import plot_bars, plot_curves
from fl_backdoor.run_dir import atomic_write_text, read_csv, write_csv
from fl_backdoor.sweeps import Experiment, SweepOutcome
from fl_backdoor.tables import PHASE_TITLES, Column, markdown_columns

K = TypeVar("K")

Report = Callable[[SweepOutcome, Path], None]  # writes a target's outputs into its directory
Row = dict[str, Any]
Curves = dict[str, tuple[Sequence[float], Sequence[float]]]  # name -> (x, y), as plot_curves takes them
Panels = dict[str, dict[str, Sequence[float | None]]]  # panel -> series -> a bar per group, as plot_bars takes them


# --- reading finished runs --------------------------------------------------------------------------------
def defense_seconds(results: Mapping[str, Any]) -> float:
    """Seconds of a run's defense: every phase's but the training's and the report-only curves'."""
    return sum(float(v) for k, v in results["phase_seconds"].items() if k not in ("train", "curves"))


def row_of(outcome: SweepOutcome, exp: Experiment) -> Row | None:
    """The paper-layout row of a finished run (results.json), with the run's name."""
    results = outcome.results(exp)
    return None if results is None else {**results["row"], "run": exp.name}


def lineage(exp: Experiment) -> list[Experiment]:
    """The experiment and its ancestors, oldest first."""
    chain = [exp]
    while (parent := chain[0].parent) is not None:
        chain.insert(0, parent)
    return chain


def round_history(outcome: SweepOutcome, exp: Experiment) -> list[dict[str, str]] | None:
    """TA and AA per round from the first round, through the shared clean rounds a run started from."""
    rows: list[dict[str, str]] = []
    for run in lineage(exp):
        run_dir = outcome.run_dir(run)
        if run_dir is None:
            return None
        mine = [r for r in read_csv(run_dir / "metrics.csv") if r.get("ta") not in (None, "")]
        rows += mine[1:] if rows else mine  # a continuation's init row repeats its parent's last round
    return rows


def phase_seconds(outcome: SweepOutcome, training: Experiment, defense: Experiment) -> dict[str, float] | None:
    """Seconds of training (shared clean rounds included), pruning, fine-tuning and AW."""
    train = 0.0
    for run in lineage(training):
        results = outcome.results(run)
        if results is None:
            return None
        train += float(results["phase_seconds"].get("train", 0.0))
    results = outcome.results(defense)
    if results is None:
        return None
    seconds = results["phase_seconds"]
    return {"train": train, **{k: float(seconds.get(k, 0.0)) for k in ("prune", "finetune", "aw")}}


def mean(values: Sequence[Any]) -> float | None:
    """Mean of the present values, None when there are none."""
    present = [float(v) for v in values if v not in (None, "")]
    return sum(present) / len(present) if present else None


# --- writing ---------------------------------------------------------------------------------------------
def write_table(out: Path, title: str, rows: Sequence[Row], columns: Sequence[Column], labels: int = 2,
                missing: Sequence[str] = (), average: bool = True) -> None:
    """table.csv (every key of every row) and table.md (the given columns, the paper's layout)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "table.csv", rows)
    text = f"# {title}\n\n" + (markdown_columns(rows, columns, labels=labels, average=average) if rows
                                else "(no finished runs)\n")
    if missing:
        text += "\nNot finished: " + ", ".join(missing) + "\n"
    atomic_write_text(out / "table.md", text)
    print(text, end="", flush=True)


def phase_columns(phases: Sequence[str]) -> list[Column]:
    """VL, AL, then TA and AA of each phase."""
    return [Column("VL", "vl"), Column("AL", "al")] + [
        Column(f"{PHASE_TITLES[p]} {m.upper()}", f"{p}_{m}") for p in phases for m in ("ta", "aa")]


def bar_panels(rows: Sequence[Row], series: Mapping[str, str],
               metrics: Sequence[tuple[str, str]] = (("TA", "ta"), ("AA", "aa"))) -> Panels:
    """plot_bars' panels: one per (title, metric), one bar series per (title, key prefix), a bar per row."""
    return {title: {name: [r.get(f"{key}_{m}") for r in rows] for name, key in series.items()}
            for title, m in metrics}


def phase_plot(path: Path, rows: Sequence[Row], phases: Sequence[str], title: str) -> None:
    """TA and AA of each phase, per target pair."""
    groups = [f"{r['vl']}->{r['al']}" for r in rows]
    plot_bars(path, groups, bar_panels(rows, {PHASE_TITLES[p]: p for p in phases}), title)


def pair_table(title: str, runs: Sequence[Experiment], phases: Sequence[str],
               relabel: Callable[[Row], None] | None = None) -> Report:
    """Report of Tables I-III: one row per pair from its defense run."""
    def report(outcome: SweepOutcome, out: Path) -> None:
        rows = [r for r in (row_of(outcome, e) for e in runs) if r is not None]
        for r in rows:
            if relabel:
                relabel(r)
        write_table(out, title, rows, phase_columns(phases), missing=[e.name for e in runs if not outcome.run_dir(e)])
        if rows:
            phase_plot(out / "table.png", rows, phases, title)
    return report


def curves_per_round(title: str, runs: Mapping[str, Experiment]) -> Report:
    """Report of Figs. 3 and 10: TA and AA per training round, one pair of curves per run."""
    def report(outcome: SweepOutcome, out: Path) -> None:
        curves: Curves = {}
        long_rows: list[Row] = []
        rows: list[Row] = []
        missing: list[str] = []
        for name, exp in runs.items():
            history = round_history(outcome, exp)
            if history is None:
                missing.append(exp.name)
                continue
            rounds = [int(r["round"]) for r in history]
            curves[f"TA {name}"] = (rounds, [float(r["ta"]) for r in history])
            curves[f"AA {name}"] = (rounds, [float(r["aa"]) for r in history])
            long_rows += [{"setting": name, "round": r["round"], "ta": r["ta"], "aa": r["aa"]} for r in history]
            rows.append({"setting": name, "rounds": rounds[-1], "ta": 100 * float(history[-1]["ta"]),
                         "aa": 100 * float(history[-1]["aa"]), "run": exp.name})
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "curves.csv", long_rows)
        write_table(out, f"{title} (after the last round)", rows,
                    [Column("setting", "setting"), Column("rounds", "rounds", "d"), Column("TA", "ta"),
                     Column("AA", "aa")], labels=1, missing=missing, average=False)
        if curves:
            plot_curves(out / "curves.png", curves, xlabel="round", title=title)
    return report


def delta_curves(data: Sequence[dict[str, str]], x: str, tag: str = "") -> Curves:
    """TA and AA curves of a run's pruning or AW curve file against column ``x`` ('none' is 0: no AW)."""
    xs = [0.0 if r[x] == "none" else float(r[x]) for r in data]
    return {f"TA{tag}": (xs, [float(r["ta"]) for r in data]), f"AA{tag}": (xs, [float(r["aa"]) for r in data])}


def finished_curves(outcome: SweepOutcome, runs: Mapping[K, Experiment], csv_name: str, key: str
                    ) -> tuple[list[tuple[K, list[dict[str, str]], Row]], list[Row], list[str]]:
    """For the finished runs: (run key, rows of its curve file ``csv_name``, its results row); every curve row
    tagged with ``key``; and the names of the runs not finished."""
    found: list[tuple[K, list[dict[str, str]], Row]] = []
    long_rows: list[Row] = []
    missing: list[str] = []
    for k, exp in runs.items():
        run_dir, row = outcome.run_dir(exp), row_of(outcome, exp)
        if run_dir is None or row is None:
            missing.append(exp.name)
            continue
        data = read_csv(run_dir / csv_name)
        found.append((k, data, row))
        long_rows += [{key: k, **r} for r in data]
    return found, long_rows, missing


def curve_figure(title: str, runs: Mapping[int, Experiment], csv_name: str, x: str, xlabel: str,
                 methods: bool) -> Report:
    """Report of Figs. 5 and 6: a run's pruning or Delta curve, one PNG per target label."""
    def report(outcome: SweepOutcome, out: Path) -> None:
        rows: list[Row] = []
        found, long_rows, missing = finished_curves(outcome, runs, csv_name, "target")
        for target, data, row in found:
            curves: Curves = {}
            for g in (sorted({r["method"] for r in data}) if methods else [""]):
                mine = [r for r in data if not methods or r["method"] == g]
                curves.update(delta_curves(mine, x, f" {g.upper()}" if methods else ""))
            plot_curves(out / f"target{target}.png", curves, xlabel=xlabel, title=f"{title}, 9 -> {target}")
            rows.append({**row, "target": target})
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "curves.csv", long_rows)
        write_table(out, f"{title}: the chosen result", rows, phase_columns(["training", "fp", "fp-aw", "all"]),
                    missing=missing, average=False)
    return report
