#!/usr/bin/env python3
"""Reproduce the tables and figures of the cleansing paper (Wu et al.), one command each.

    python experiments/paper.py table1 --scale tiny          # a smoke run: minutes
    python experiments/paper.py table2 --scale small         # a laptop: tens of minutes
    RAY_ADDRESS=auto python experiments/paper.py table1 --scale full     # a Ray cluster: the paper's setting

Targets: table1 .. table7, fig3, fig5 .. fig10, adaptive (see --help).  Every target runs its
experiments as a sweep of Ray tasks (fl_backdoor.sweeps) whose run directories land in
<results-dir>/runs/, shared by all targets of the same results directory: a run that
one target needs and another has finished is not run again, and an interrupted target
resumes where it stopped.  The target then writes <results-dir>/<target>/: table.csv
(raw rows), table.md (the paper's layout) and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import dba_cifar
from fl_backdoor.cli import add_config_arguments, run_cli
from fl_backdoor.config import UserError, config_from_args
from fl_backdoor.plots import plot_bars, plot_curves
from fl_backdoor.run_dir import atomic_write_text, read_csv, write_csv, write_json
from fl_backdoor.sweeps import SWEEP_KEYS, Experiment, SweepOutcome, clean_pretraining, finished_runs, run_sweep
from fl_backdoor.tables import PHASE_TITLES, Column, markdown_columns
from server_strategies.simulation import run_simulation

# --- the paper's settings --------------------------------------------------------------------------------
FEDERATION = {"num-clients": 10, "fraction": 1.0, "partition": "k-labels", "labels-per-client": 3,
              "num-attackers": 1, "attack-mode": "victim"}
# MNIST: 2 conv + 2 fc (20, 50 channels); a 3x3 white square; see README "Reproducing the paper"
MNIST = {"dataset": "mnist", "model": "mnist-cnn", "model-widths": "20,50", "lr": 0.1, "momentum": 0.0,
         "poison-lr": 0.1, "poison-epochs": 6, "gamma": 3, "trigger": "pixel-9"}
# Fashion-MNIST: 3 conv + 2 fc, single-pixel trigger: the schema's defaults are this setting (README)
FMNIST = {"dataset": "fashion-mnist"}
SHORT = {"mnist": "mnist", "fashion-mnist": "fmnist", "cifar10": "cifar"}
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Scale:
    """What a scale sets: shared settings, rounds, shared clean rounds, which cases run, CIFAR and comparison sizes."""

    settings: dict[str, Any]
    rounds: dict[str, int]          # dataset -> training rounds (shared clean rounds included)
    pretrain: dict[str, int]        # dataset -> clean rounds shared by all pairs (0: attack from round 1, the paper)
    mnist_pairs: list[tuple[int, int]]
    fmnist_pairs: list[tuple[int, int]]
    cifar_labels: list[int]
    clients_selected: list[int]     # Fig. 7: clients per round out of 50
    attackers: list[int]            # Fig. 8: attackers out of 10
    l2: list[float]                 # Fig. 10: lambda of the last conv layer
    cifar: list[str]                # dba_cifar.py options
    compare: list[str] = field(default_factory=list)  # compare_defenses.py options


MNIST_ALL = [(9, a) for a in range(9)] + [(v, 9) for v in range(9)]
SCALES = {
    "full": Scale({"data-fraction": 1.0, "test-subset": 0, "curve-points": 32},
                  {"mnist": 40, "fashion-mnist": 60}, {"mnist": 0, "fashion-mnist": 0},
                  MNIST_ALL, [(9, a) for a in range(9)], list(range(9)), [5, 10, 15, 20, 25], list(range(1, 11)),
                  [0.0, 1e-4, 1e-3, 1e-2],
                  ["--clients", "100", "--per-round", "10", "--pretrain-rounds", "200", "--attack-stage-rounds", "20"]),
    "small": Scale({"data-fraction": 0.25, "test-subset": 2000, "curve-points": 16},
                   {"mnist": 20, "fashion-mnist": 30}, {"mnist": 10, "fashion-mnist": 15},
                   [(9, 0), (9, 2), (0, 9)], [(9, 0), (9, 2), (9, 6)], [0, 1], [5, 15, 25], [1, 3, 5, 7, 10],
                   [0.0, 1e-3, 1e-2],
                   ["--clients", "20", "--per-round", "5", "--pretrain-rounds", "5", "--attack-stage-rounds", "10",
                    "--subset", "0.05", "--test-subset", "1000"],
                   ["--anp-iterations", "200", "--nc-steps", "200", "--hasnet-iterations", "3",
                    "--hasnet-healing-epochs", "3", "--ft-epochs", "5"]),
    "tiny": Scale({"data-fraction": 0.05, "test-subset": 300, "curve-points": 3, "finetune-rounds": 1,
                   "finetune-patience": 1, "aw-delta-step": 1.0},
                  {"mnist": 4, "fashion-mnist": 4}, {"mnist": 2, "fashion-mnist": 2},
                  [(9, 0), (0, 9)], [(9, 0), (9, 1)], [0, 1], [5, 10], [1, 10], [0.0, 1e-2],
                  ["--clients", "4", "--per-round", "4", "--pretrain-rounds", "1", "--attack-stage-rounds", "9",
                   "--subset", "0.01", "--test-subset", "200"],
                  ["--anp-iterations", "5", "--nc-steps", "5", "--hasnet-iterations", "1",
                   "--hasnet-healing-epochs", "1", "--ft-epochs", "1"]),
}


@dataclass
class Setup:
    """The chosen scale and the user's -c overrides: builds every experiment's config."""

    scale_name: str
    overrides: list[str]
    pretrain_rounds: int | None = None  # --pretrain-rounds: replaces the scale's shared clean rounds
    pairs: list[tuple[int, int]] | None = None  # --pairs: replaces the scale's MNIST and Fashion-MNIST pairs
    factors: list[str] | None = None  # --factors: the ablation's factors (default: all of them)

    @property
    def scale(self) -> Scale:
        """The scale's settings, with the chosen pairs."""
        scale = SCALES[self.scale_name]
        if self.pairs is None:
            return scale
        return replace(scale, mnist_pairs=list(self.pairs), fmnist_pairs=list(self.pairs))

    def config(self, preset: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """Flat config: the paper's federation, the dataset preset, the scale, the changes, then -c overrides."""
        base = {**FEDERATION, **preset, **self.scale.settings, "num-rounds": self.scale.rounds[preset["dataset"]]}
        base.update({k.replace("_", "-"): v for k, v in changes.items()})
        flat = config_from_args(self.overrides, base).to_flat()
        return {k: v for k, v in flat.items() if k not in SWEEP_KEYS}

    def training(self, preset: dict[str, Any], **changes: Any) -> Experiment:
        """The training run under attack (train-only), after the scale's shared clean rounds if any."""
        flat = self.config(preset, defense="train-only", **changes)
        attacker = "" if flat["adaptive-attack"] == "none" else f"-{flat['adaptive-attack']}"
        label = f"{SHORT[flat['dataset']]}-{flat['victim-label']}to{flat['attack-label']}{attacker}-train"
        clean = self.scale.pretrain[flat["dataset"]] if self.pretrain_rounds is None else self.pretrain_rounds
        if clean <= 0:
            return Experiment(label, flat)
        if clean >= flat["num-rounds"]:
            raise UserError(f"--pretrain-rounds: {clean} clean rounds leave none of the {flat['num-rounds']} "
                            f"training rounds to the attack")
        pretraining = clean_pretraining(flat, clean, label=f"{SHORT[flat['dataset']]}-pretrain")
        return Experiment(label, {**flat, "num-rounds": flat["num-rounds"] - clean}, parent=pretraining)

    def cifar_training(self, labels: Sequence[int]) -> dict[int, Experiment]:
        """Table III's attack stages (truck -> AL), one shared clean pretraining, at this scale."""
        shared = [f"{k}={v}" for k, v in self.scale.settings.items() if k not in ("data-fraction", "test-subset")]
        argv = ["--setting", "paper", *self.scale.cifar]
        for item in shared + self.overrides:
            argv += ["-c", item]
        return dba_cifar.table3_training(dba_cifar.build_parser().parse_args(argv), labels)


def defended(training: Experiment, defense: str, **changes: Any) -> Experiment:
    """The defense run on a training run's model (no new training rounds)."""
    suffix = "-".join([defense] + [str(changes[k]) for k in ("pruning_method", "adaptive_attack") if k in changes])
    return training.child(training.label.replace("-train", f"-{suffix}"), defense=defense, **changes)


@dataclass
class Plan:
    """A target: its experiments and what it writes from their results.

    ``then`` builds experiments that need files of finished runs (the oracle attacker needs
    the baseline's final mask); they run as a second sweep into the same results directory.
    """

    experiments: list[Experiment]
    report: Callable[[SweepOutcome, Path], None]
    then: Callable[[SweepOutcome], list[Experiment]] | None = None


# --- reading finished runs --------------------------------------------------------------------------------
def row_of(outcome: SweepOutcome, exp: Experiment) -> dict[str, Any] | None:
    """The paper-layout row of a finished run (results.json), with the run's name."""
    results = outcome.results(exp)
    return None if results is None else {**results["row"], "run": exp.name}


def lineage(exp: Experiment) -> list[Experiment]:
    """The experiment and its ancestors, oldest first."""
    chain = [exp]
    while chain[0].parent is not None:
        chain.insert(0, chain[0].parent)
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


# --- writing ---------------------------------------------------------------------------------------------
def write_table(out: Path, title: str, rows: list[dict[str, Any]], columns: list[Column], labels: int = 2,
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


def phase_plot(path: Path, rows: list[dict[str, Any]], phases: Sequence[str], title: str) -> None:
    """TA and AA of each phase, per target pair."""
    groups = [f"{r['vl']}->{r['al']}" for r in rows]
    panels = {metric: {PHASE_TITLES[p]: [r.get(f"{p}_{m}") for r in rows] for p in phases}
              for metric, m in (("TA", "ta"), ("AA", "aa"))}
    plot_bars(path, groups, panels, title)


def pair_table(title: str, runs: list[Experiment], phases: Sequence[str],
               relabel: Callable[[dict[str, Any]], None] | None = None) -> Callable[[SweepOutcome, Path], None]:
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


# --- the targets -----------------------------------------------------------------------------------------
def table1(setup: Setup) -> Plan:
    """Table I: MNIST, 9 -> 0..8 and 0..8 -> 9; Training, FP+AW and All."""
    runs = [defended(setup.training(MNIST, victim_label=v, attack_label=a), "all") for v, a in setup.scale.mnist_pairs]
    return Plan(runs, pair_table("Table I: MNIST, federated cleansing in different modes", runs,
                                 ["training", "fp-aw", "all"]))


def table2(setup: Setup) -> Plan:
    """Table II: Fashion-MNIST, single-pixel trigger, 9 -> 0..8; Training, FP, FP+AW and All."""
    runs = [defended(setup.training(FMNIST, victim_label=v, attack_label=a), "all")
            for v, a in setup.scale.fmnist_pairs]
    return Plan(runs, pair_table("Table II: Fashion-MNIST", runs, ["training", "fp", "fp-aw", "all"]))


def table3(setup: Setup) -> Plan:
    """Table III: CIFAR-10, VGG11, DBA, truck -> every other class; one shared clean pretraining."""
    runs = [defended(t, "all") for t in setup.cifar_training(setup.scale.cifar_labels).values()]

    def names(row: dict[str, Any]) -> None:
        row["vl"], row["al"] = CIFAR_CLASSES[int(row["vl"])], CIFAR_CLASSES[int(row["al"])]
    return Plan(runs, pair_table("Table III: CIFAR-10 under the distributed backdoor attack", runs,
                                 ["training", "fp", "fp-aw", "all"], names))


def table4(setup: Setup) -> Plan:
    """Table IV: federated cleansing against centralized defenses (Neural Cleanse, ANP, HaS-Net, Fine-Pruning)."""
    scale = setup.scale
    cases = {"MNIST": [defended(setup.training(MNIST, victim_label=v, attack_label=a), "all")
                       for v, a in scale.mnist_pairs],
             "Fashion-MNIST": [defended(setup.training(FMNIST, victim_label=v, attack_label=a), "all")
                               for v, a in scale.fmnist_pairs],
             "CIFAR-10": [defended(t, "all") for t in setup.cifar_training(scale.cifar_labels).values()]}

    def report(outcome: SweepOutcome, out: Path) -> None:
        import compare_defenses

        long_rows, missing = [], []
        for dataset, runs in cases.items():
            for run in runs:
                row = row_of(outcome, run)
                if row is None:
                    missing.append(run.name)
                    continue
                compared = out / "compare" / run.parent.name
                if not (compared / "table.csv").is_file():
                    checkpoint = outcome.run_dir(run.parent) / "checkpoints" / "trained.pt"
                    compare_defenses.main(["--checkpoint", str(checkpoint), "--out", str(compared), *scale.compare])
                pair = f"{row['vl']}->{row['al']}"
                long_rows.append({"dataset": dataset, "pair": pair, "defense": "Training",
                                  "ta": row["training_ta"], "aa": row["training_aa"], "run": run.name})
                # a variant stays a column of its own; Neural Cleanse's outcome note does not make one
                long_rows += [{"dataset": dataset, "pair": pair, "ta": r["ta"], "aa": r["aa"], "run": run.name,
                               "defense": r["defense"].replace(" (nothing flagged)", "")}
                              for r in read_csv(compared / "table.csv")
                              if not r["defense"].startswith(("Training", "Federated"))]
                long_rows.append({"dataset": dataset, "pair": pair, "defense": "Our method (All)",
                                  "ta": row["all_ta"], "aa": row["all_aa"], "run": run.name})
        defenses = list(dict.fromkeys(r["defense"] for r in long_rows))
        rows = []
        for dataset in cases:
            mine = [r for r in long_rows if r["dataset"] == dataset]
            if not mine:
                continue
            summary: dict[str, Any] = {"dataset": dataset, "pairs": len({r["pair"] for r in mine})}
            for d in defenses:
                for m in ("ta", "aa"):
                    summary[f"{d}_{m}"] = _mean([r[m] for r in mine if r["defense"] == d])
            rows.append(summary)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "comparison.csv", long_rows)
        columns = [Column("Dataset", "dataset"), Column("Pairs", "pairs")] + [
            Column(f"{d} {m.upper()}", f"{d}_{m}") for d in defenses for m in ("ta", "aa")]
        write_table(out, "Table IV: comparison with centralized defenses (averages over the pairs)", rows, columns,
                    missing=missing)
        if rows:
            plot_bars(out / "table.png", [r["dataset"] for r in rows],
                 {metric: {d: [r.get(f"{d}_{m}") for r in rows] for d in defenses}
                  for metric, m in (("TA", "ta"), ("AA", "aa"))}, "Table IV")
    return Plan([r for runs in cases.values() for r in runs], report)


def table5(setup: Setup) -> Plan:
    """Table V: RAP against MVP pruning on MNIST (both on the same trained model)."""
    cases = []
    for v, a in setup.scale.mnist_pairs:
        training = setup.training(MNIST, victim_label=v, attack_label=a)
        cases.append((defended(training, "fp", pruning_method="rap"), defended(training, "fp", pruning_method="mvp")))

    def report(outcome: SweepOutcome, out: Path) -> None:
        rows, missing = [], []
        for rap, mvp in cases:
            r, m = row_of(outcome, rap), row_of(outcome, mvp)
            if r is None or m is None:
                missing += [e.name for e, x in ((rap, r), (mvp, m)) if x is None]
                continue
            rows.append({"vl": r["vl"], "al": r["al"], "training_ta": r["training_ta"], "training_aa": r["training_aa"],
                         "rap_ta": r["fp_ta"], "rap_aa": r["fp_aa"], "rap_pruned": r["pruned"],
                         "mvp_ta": m["fp_ta"], "mvp_aa": m["fp_aa"], "mvp_pruned": m["pruned"],
                         "rap_run": rap.name, "mvp_run": mvp.name})
        columns = [Column("VL", "vl"), Column("AL", "al"), Column("Training TA", "training_ta"),
                   Column("Training AA", "training_aa"), Column("Ranking V TA", "rap_ta"),
                   Column("Ranking V AA", "rap_aa"), Column("Majority V TA", "mvp_ta"),
                   Column("Majority V AA", "mvp_aa")]
        write_table(out, "Table V: federated pruning, RAP (Ranking V) against MVP (Majority V)", rows, columns,
                    missing=missing)
        if rows:
            plot_bars(out / "table.png", [f"{r['vl']}->{r['al']}" for r in rows],
                 {metric: {name: [r[f"{key}_{m}"] for r in rows]
                           for name, key in (("Training", "training"), ("Ranking V", "rap"), ("Majority V", "mvp"))}
                  for metric, m in (("TA", "ta"), ("AA", "aa"))}, "Table V")
    return Plan([e for case in cases for e in case], report)


def table6(setup: Setup) -> Plan:
    """Table VI: AW only, on a small (8, 16) and a large (20, 50) MNIST CNN."""
    models = {"small": "8,16", "large": "20,50"}
    cases = [{size: defended(setup.training(MNIST, victim_label=v, attack_label=a, model_widths=w), "aw")
              for size, w in models.items()} for v, a in setup.scale.mnist_pairs]

    def report(outcome: SweepOutcome, out: Path) -> None:
        rows, missing = [], []
        for case in cases:
            found = {size: row_of(outcome, e) for size, e in case.items()}
            missing += [case[s].name for s, r in found.items() if r is None]
            if any(r is None for r in found.values()):
                continue
            row = {"vl": found["small"]["vl"], "al": found["small"]["al"]}
            for size, r in found.items():
                row.update({f"{size}_n": r["zeroed"], f"{size}_ta": r["aw_ta"], f"{size}_aa": r["aw_aa"],
                            f"{size}_delta": r["delta"], f"{size}_training_ta": r["training_ta"],
                            f"{size}_training_aa": r["training_aa"], f"{size}_run": r["run"]})
            rows.append(row)
        columns = [Column("VL", "vl"), Column("AL", "al")]
        for size in models:
            columns += [Column(f"{size.capitalize()} NN N", f"{size}_n", "d"),
                        Column(f"{size.capitalize()} NN TA", f"{size}_ta"),
                        Column(f"{size.capitalize()} NN AA", f"{size}_aa")]
        write_table(out, "Table VI: adjusting extreme weights only (N = weights zeroed)", rows, columns,
                    missing=missing)
        if rows:
            plot_bars(out / "table.png", [f"{r['vl']}->{r['al']}" for r in rows],
                 {metric: {f"{size} NN": [r[f"{size}_{m}"] for r in rows] for size in models}
                  for metric, m in (("TA after AW", "ta"), ("AA after AW", "aa"))}, "Table VI")
    return Plan([e for case in cases for e in case.values()], report)


def table7(setup: Setup) -> Plan:
    """Table VII: trigger patterns of 1, 3, 5, 7 and 9 pixels, 9 -> 1, FP then AW with Delta = 3."""
    runs = {p: defended(setup.training(MNIST, victim_label=9, attack_label=1, trigger=f"pixel-{p}"), "fp-aw",
                        aw_delta=3.0) for p in (1, 3, 5, 7, 9)}

    def report(outcome: SweepOutcome, out: Path) -> None:
        rows = [{**r, "pixels": p} for p, r in ((p, row_of(outcome, e)) for p, e in runs.items()) if r is not None]
        columns = [Column("pixels", "pixels"), Column("Training TA", "training_ta"),
                   Column("Training AA", "training_aa"),
                   Column("FP num", "pruned", "d"), Column("FP TA", "fp_ta"), Column("FP AA", "fp_aa"),
                   Column("FP+AW num", "zeroed", "d"), Column("FP+AW TA", "fp-aw_ta"), Column("FP+AW AA", "fp-aw_aa")]
        write_table(out, "Table VII: federated pruning under different trigger patterns (9 -> 1, Delta = 3)", rows,
                    columns, labels=1, missing=[e.name for e in runs.values() if not outcome.run_dir(e)])
        if rows:
            plot_bars(out / "table.png", [f"{r['pixels']} px" for r in rows],
                 {metric: {PHASE_TITLES[p]: [r.get(f"{p}_{m}") for r in rows] for p in ("training", "fp", "fp-aw")}
                  for metric, m in (("TA", "ta"), ("AA", "aa"))}, "Table VII")
    return Plan(list(runs.values()), report)


def curves_per_round(title: str, runs: dict[str, Experiment]) -> Callable[[SweepOutcome, Path], None]:
    """Report of Figs. 3 and 10: TA and AA per training round, one pair of curves per run."""
    def report(outcome: SweepOutcome, out: Path) -> None:
        curves, long_rows, rows, missing = {}, [], [], []
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


def fig3(setup: Setup) -> Plan:
    """Fig. 3: training under 3, 5 and 7 labels per client (MNIST, 9 -> 0)."""
    runs = {f"{k}-label": setup.training(MNIST, victim_label=9, attack_label=0, labels_per_client=k)
            for k in (3, 5, 7)}
    return Plan(list(runs.values()), curves_per_round("Fig. 3: MNIST training, K labels per client", runs))


def fig10(setup: Setup) -> Plan:
    """Fig. 10: L2 regularisation of the last conv layer during training, for several lambda."""
    runs = {f"lambda={lam:g}": setup.training(MNIST, victim_label=9, attack_label=0, last_conv_l2=lam)
            for lam in setup.scale.l2}
    return Plan(list(runs.values()), curves_per_round("Fig. 10: L2 penalty on the last conv layer", runs))


def curve_figure(title: str, runs: dict[int, Experiment], csv_name: str, x: str, xlabel: str,
                 methods: bool) -> Callable[[SweepOutcome, Path], None]:
    """Report of Figs. 5 and 6: a run's pruning or Delta curve, one PNG per target label."""
    def report(outcome: SweepOutcome, out: Path) -> None:
        long_rows, rows, missing = [], [], []
        for target, exp in runs.items():
            run_dir = outcome.run_dir(exp)
            if run_dir is None:
                missing.append(exp.name)
                continue
            data = read_csv(run_dir / csv_name)
            long_rows += [{"target": target, **r} for r in data]
            groups = sorted({r["method"] for r in data}) if methods else [""]
            curves = {}
            for g in groups:
                mine = [r for r in data if not methods or r["method"] == g]
                xs = [0.0 if r[x] == "none" else float(r[x]) for r in mine]
                tag = f" {g.upper()}" if methods else ""
                curves[f"TA{tag}"] = (xs, [float(r["ta"]) for r in mine])
                curves[f"AA{tag}"] = (xs, [float(r["aa"]) for r in mine])
            plot_curves(out / f"target{target}.png", curves, xlabel=xlabel, title=f"{title}, 9 -> {target}")
            rows.append({**row_of(outcome, exp), "target": target})
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "curves.csv", long_rows)
        write_table(out, f"{title}: the chosen result", rows, phase_columns(["training", "fp", "fp-aw", "all"]),
                    missing=missing, average=False)
    return report


def fig5(setup: Setup) -> Plan:
    """Fig. 5: pruning curves (RAP and MVP), MNIST 9 -> 0 and 9 -> 2."""
    runs = {a: defended(setup.training(MNIST, victim_label=9, attack_label=a), "all") for a in (0, 2)}
    return Plan(list(runs.values()), curve_figure("Fig. 5: federated pruning", runs, "pruning_curve.csv", "pruned",
                                                  "pruned neurons", methods=True))


def fig6(setup: Setup) -> Plan:
    """Fig. 6: TA and AA against Delta (Delta = 0: no AW), MNIST 9 -> 0 and 9 -> 2."""
    runs = {a: defended(setup.training(MNIST, victim_label=9, attack_label=a), "all") for a in (0, 2)}
    return Plan(list(runs.values()), curve_figure("Fig. 6: adjusting extreme weights", runs, "aw_curve_all.csv",
                                                  "delta", "Delta (0 = no AW)", methods=False))


def fig7(setup: Setup) -> Plan:
    """Fig. 7: random selection of 5..25 of 50 clients (5 attackers), AW curves of the defended models."""
    runs = {k: defended(setup.training(MNIST, victim_label=9, attack_label=0, num_clients=50, num_attackers=5,
                                       fraction=k / 50, attackers_always_selected=False), "all")
            for k in setup.scale.clients_selected}

    def report(outcome: SweepOutcome, out: Path) -> None:
        curves, rows, long_rows, missing = {}, [], [], []
        for k, exp in runs.items():
            run_dir = outcome.run_dir(exp)
            if run_dir is None:
                missing.append(exp.name)
                continue
            data = read_csv(run_dir / "aw_curve_all.csv")
            long_rows += [{"selected": k, **r} for r in data]
            xs = [0.0 if r["delta"] == "none" else float(r["delta"]) for r in data]
            curves[f"TA {k} clients"] = (xs, [float(r["ta"]) for r in data])
            curves[f"AA {k} clients"] = (xs, [float(r["aa"]) for r in data])
            rows.append({**row_of(outcome, exp), "selected": k})
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "curves.csv", long_rows)
        write_table(out, "Fig. 7: clients selected at random per round (of 50, 5 attackers)", rows,
                    [Column("selected", "selected")] + phase_columns(["training", "fp", "all"])[2:], labels=1,
                    missing=missing, average=False)
        if curves:
            plot_curves(out / "curves.png", curves, xlabel="Delta (0 = no AW)", title="Fig. 7: AW, clients per round")
    return Plan(list(runs.values()), report)


def fig8(setup: Setup) -> Plan:
    """Fig. 8: 1 to 10 attackers of 10 clients; TA and AA after FP and after All."""
    runs = {n: defended(setup.training(MNIST, victim_label=9, attack_label=0, num_attackers=n), "all")
            for n in setup.scale.attackers}

    def report(outcome: SweepOutcome, out: Path) -> None:
        rows = [{**r, "attackers": n} for n, r in ((n, row_of(outcome, e)) for n, e in runs.items()) if r is not None]
        write_table(out, "Fig. 8: number of attackers among 10 clients", rows,
                    [Column("attackers", "attackers")] + phase_columns(["training", "fp", "all"])[2:], labels=1,
                    missing=[e.name for e in runs.values() if not outcome.run_dir(e)], average=False)
        if rows:
            xs = [r["attackers"] for r in rows]
            plot_curves(out / "attackers.png",
                        {f"{m.upper()} {PHASE_TITLES[p]}": (xs, [r[f"{p}_{m}"] / 100 for r in rows])
                         for p in ("fp", "all") for m in ("ta", "aa")},
                        xlabel="attackers", title="Fig. 8: attackers among 10 clients")
    return Plan(list(runs.values()), report)


def fig9(setup: Setup) -> Plan:
    """Fig. 9: seconds per phase (training, pruning, fine-tuning, AW) on the three tasks."""
    scale = setup.scale
    (v, a), (fv, fa) = scale.mnist_pairs[0], scale.fmnist_pairs[0]
    trainings = {"MNIST": setup.training(MNIST, victim_label=v, attack_label=a),
                 "Fashion-MNIST": setup.training(FMNIST, victim_label=fv, attack_label=fa),
                 "CIFAR-10": setup.cifar_training(scale.cifar_labels[:1])[scale.cifar_labels[0]]}
    runs = {task: (t, defended(t, "all")) for task, t in trainings.items()}
    phases = ("train", "prune", "finetune", "aw")

    def report(outcome: SweepOutcome, out: Path) -> None:
        rows, missing = [], []
        for task, (training, defense) in runs.items():
            seconds = phase_seconds(outcome, training, defense)
            if seconds is None:
                missing.append(defense.name)
                continue
            rows.append({"task": task, **seconds, "run": defense.name})
        columns = [Column("task", "task")] + [Column(f"{p} (s)", p) for p in phases]
        write_table(out, "Fig. 9: seconds per phase", rows, columns, labels=1, missing=missing, average=False)
        if rows:
            plot_bars(out / "phases.png", [r["task"] for r in rows],
                 {"seconds": {p: [r[p] for r in rows] for p in phases}}, "Fig. 9: time per phase", ylabel="seconds")
    return Plan([d for _, d in runs.values()], report)


ADAPTIVE = ("none", "rank-manipulation", "pruning-aware", "pruning-aware-oracle", "aw-aware")


def adaptive(setup: Setup) -> Plan:
    """Section VI-B: All mode against attackers who know the defense, next to the plain attacker (Fashion-MNIST)."""
    pairs = setup.scale.fmnist_pairs
    baseline = {pair: setup.training(FMNIST, victim_label=pair[0], attack_label=pair[1]) for pair in pairs}
    cases: dict[tuple[int, int], dict[str, Experiment]] = {}
    for pair, training in baseline.items():
        v, a = pair
        cases[pair] = {
            "none": defended(training, "all"),
            # rank manipulation only lies in the cleansing queries: it defends the baseline's model
            "rank-manipulation": defended(training, "all", adaptive_attack="rank-manipulation"),
            **{kind: defended(setup.training(FMNIST, victim_label=v, attack_label=a, adaptive_attack=kind), "all")
               for kind in ("pruning-aware", "aw-aware")}}

    def oracle(outcome: SweepOutcome) -> list[Experiment]:
        """The oracle attacker trains knowing the final mask of the baseline's defense."""
        for pair, case in cases.items():
            run_dir = outcome.run_dir(case["none"])
            if run_dir is not None:
                case["pruning-aware-oracle"] = defended(setup.training(
                    FMNIST, victim_label=pair[0], attack_label=pair[1], adaptive_attack="pruning-aware-oracle",
                    oracle_checkpoint=str(run_dir / "checkpoints" / "fp.pt")), "all")
        return [c["pruning-aware-oracle"] for c in cases.values() if "pruning-aware-oracle" in c]

    def report(outcome: SweepOutcome, out: Path) -> None:
        rows, long_rows, missing = [], [], []
        for (v, a), case in cases.items():
            row: dict[str, Any] = {"vl": v, "al": a}
            for kind in ADAPTIVE:
                found = row_of(outcome, case[kind]) if kind in case else None
                if found is None:
                    missing.append(case[kind].name if kind in case else f"{kind} {v}->{a}")
                    continue
                long_rows.append({"attacker": kind, **found})
                row.update({f"{kind}_training_aa": found["training_aa"], f"{kind}_all_ta": found["all_ta"],
                            f"{kind}_all_aa": found["all_aa"]})
            rows.append(row)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "runs.csv", long_rows)
        columns = [Column("VL", "vl"), Column("AL", "al")] + [
            Column(f"{kind} {title}", f"{kind}_{key}") for kind in ADAPTIVE
            for title, key in (("Training AA", "training_aa"), ("All TA", "all_ta"), ("All AA", "all_aa"))]
        write_table(out, "Adaptive attackers against the All mode (none = the plain attacker)", rows, columns,
                    missing=missing)
        if long_rows:
            def average(key: str) -> list[float | None]:
                return [_mean([r[key] for r in long_rows if r["attacker"] == k]) for k in ADAPTIVE]
            plot_bars(out / "table.png", list(ADAPTIVE),
                 {"TA": {"Training": average("training_ta"), "All": average("all_ta")},
                  "AA": {"Training": average("training_aa"), "All": average("all_aa")}},
                 "Adaptive attackers (averages over the pairs)")
    return Plan([e for case in cases.values() for e in case.values()], report, then=oracle)

# --- the cleansing-fidelity ablation (README "Which reading of the paper") --------------------------------
# The behaviour before the faithful defaults: every factor below but the first three is measured as a change of it alone.
PREVIOUS = {"pruning-stop": "cumulative", "finetune-keep": "best", "aw-keep": "passing", "aw-stats": "kept"}


@dataclass(frozen=True)
class Factor:
    """One reading of the paper: its defense settings, or training settings that need a new training run."""

    title: str
    defense: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


FACTORS = {
    "chosen": Factor("the defaults (all faithful readings together)"),
    "chosen-cumulative": Factor("the defaults with the cumulative pruning stop (Algorithm 1's fixed threshold)",
                                {"pruning-stop": "cumulative"}),
    "chosen-ft-poison": Factor("the defaults with attackers that poison without boosting during fine-tuning",
                               {"finetune-attack": "poison"}),
    "previous": Factor("previous behaviour", dict(PREVIOUS)),
    "per-step-stop": Factor("pruning stops at a 1-point drop from the previous count",
                            {**PREVIOUS, "pruning-stop": "per-step"}),
    "ft-keep-last": Factor("fine-tuning hands on its last model", {**PREVIOUS, "finetune-keep": "last"}),
    "aw-crossing": Factor("AW keeps the Delta that crossed the threshold", {**PREVIOUS, "aw-keep": "crossing"}),
    "aw-all-weights": Factor("AW statistics over all weights of the layer", {**PREVIOUS, "aw-stats": "all"}),
    "aw-fixed-3": Factor("AW at the fixed Delta 3 of Table VII", {**PREVIOUS, "aw-delta": 3.0}),
    "ft-attack-poison": Factor("attackers poison without boosting during fine-tuning",
                               {**PREVIOUS, "finetune-attack": "poison"}),
    "ft-attack-benign": Factor("attackers train honestly during fine-tuning", {**PREVIOUS, "finetune-attack": "benign"}),
    "client-accuracy": Factor("decisions on the clients' reported accuracy (all their data, not 600 images)",
                              {**PREVIOUS, "pruning-accuracy": "clients"}),
    # trigger-origin is the top-left of the pattern's 3x3 box: 26,26 puts the single pixel at (27,27)
    "trigger-27-27": Factor("single-pixel trigger at (27,27), a pixel no boot lights (retrains)", dict(PREVIOUS),
                            {"trigger-origin": "26,26"}),
    "validation-3000": Factor("decisions on 3000 validation images instead of 600 (retrains: the split changes)",
                              dict(PREVIOUS), {"validation-fraction": 0.05}),
    "ceil-pool-model": Factor("FashionCNN whose last pooling keeps conv3's row and column 6 (retrains)",
                              dict(PREVIOUS), {"model": "fmnist-cnn-ceil"}),
}
ABLATION_PHASES = ("training", "fp", "fp-aw", "all")


def ablation(setup: Setup) -> Plan:
    """Cleansing fidelity: Table II's pairs defended under each reading of the paper, RAP and MVP."""
    names = setup.factors or list(FACTORS)
    cases: list[tuple[str, str, Experiment]] = []
    for method in ("rap", "mvp"):  # RAP first: an interrupted ablation has every factor's RAP column
        for name in names:
            factor = FACTORS[name]
            for v, a in setup.scale.fmnist_pairs:
                training = setup.training(FMNIST, victim_label=v, attack_label=a, **factor.training)
                if name == "chosen":  # the same runs as Table II (RAP) and its MVP variant
                    run = defended(training, "all", **({"pruning_method": "mvp"} if method == "mvp" else {}))
                else:
                    label = training.label.replace("-train", f"-abl-{name}-{method}")
                    run = training.child(label, defense="all", pruning_method=method, **factor.defense)
                cases.append((name, method, run))

    def report(outcome: SweepOutcome, out: Path) -> None:
        keys = [f"{p}_{m}" for p in ABLATION_PHASES for m in ("ta", "aa")] + ["pruned", "ft_rounds"]
        pair_columns = phase_columns(ABLATION_PHASES) + [Column("Pruned", "pruned", "d"), Column("Delta", "delta", ".2f"),
                                                         Column("FT rounds", "ft_rounds", "d")]
        rows, averages, missing, sections = [], [], [], []
        for name in names:
            for method in ("rap", "mvp"):
                runs = [e for n, m, e in cases if n == name and m == method]
                mine = [r for r in (row_of(outcome, e) for e in runs) if r is not None]
                missing += [e.name for e in runs if outcome.run_dir(e) is None]
                rows += [{"factor": name, "method": method, **r} for r in mine]
                averages.append({"factor": name, "method": method.upper(), "pairs": len(mine),
                                 **{k: _mean([r.get(k) for r in mine]) for k in keys}})
                if mine:
                    sections.append(f"## {name}, {method.upper()}: {FACTORS[name].title}\n\n"
                                    + markdown_columns(mine, pair_columns))
        columns = ([Column("Factor", "factor"), Column("Method", "method"), Column("Pairs", "pairs", "d")]
                   + phase_columns(ABLATION_PHASES)[2:]
                   + [Column("Pruned", "pruned"), Column("FT rounds", "ft_rounds")])
        write_table(out, "Cleansing ablation on Table II (Fashion-MNIST): averages over the finished pairs",
                    averages, columns, labels=2, missing=missing, average=False)
        atomic_write_text(out / "factors.md", "\n".join(f"- {n}: {FACTORS[n].title}" for n in names) + "\n")
        write_csv(out / "pairs.csv", rows)
        atomic_write_text(out / "pairs.md", "# Cleansing ablation, per pair\n\n" + "\n".join(sections))
    return Plan([e for _, _, e in cases], report)


def _mean(values: Sequence[Any]) -> float | None:
    """Mean of the present values, None when there are none."""
    present = [float(v) for v in values if v not in (None, "")]
    return sum(present) / len(present) if present else None


TARGETS: dict[str, Callable[[Setup], Plan]] = {
    "table1": table1, "table2": table2, "table3": table3, "table4": table4, "table5": table5, "table6": table6,
    "table7": table7, "fig3": fig3, "fig5": fig5, "fig6": fig6, "fig7": fig7, "fig8": fig8, "fig9": fig9,
    "fig10": fig10, "adaptive": adaptive, "ablation": ablation,
}


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """'9-0,9-1' -> [(9, 0), (9, 1)]: labels 0..9, victim and attack label different."""
    pairs = []
    for item in text.split(","):
        parts = item.strip().split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) <= 9 for p in parts) or parts[0] == parts[1]:
            raise argparse.ArgumentTypeError(f"'{item}' is not a pair VL-AL of two different labels 0..9")
        pairs.append((int(parts[0]), int(parts[1])))
    return pairs


def parse_factors(text: str) -> list[str]:
    """'chosen,previous' -> ['chosen', 'previous']: names of the ablation's factors."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in FACTORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown factor(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(FACTORS)}")
    return names


def main(argv: list[str] | None = None) -> SweepOutcome:
    """Build the target's experiments, run them as a sweep, write its tables and plots."""
    targets = "\n".join(f"  {k:8s} {f.__doc__.splitlines()[0]}" for k, f in TARGETS.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="targets:\n" + targets)
    parser.add_argument("target", choices=list(TARGETS), metavar="TARGET",
                        help="table1..table7, fig3, fig5..fig10, adaptive, ablation")
    parser.add_argument("--scale", choices=list(SCALES), default="small",
                        help="full: the paper's setting; small: a laptop; tiny: a smoke run (README)")
    parser.add_argument("--results-dir", default="", help="default: results/paper-<scale>")
    parser.add_argument("--parallel", type=int, default=None,
                        help="experiments at once (default: 1 locally; on a RAY_ADDRESS cluster as many as fit)")
    parser.add_argument("--pretrain-rounds", type=int, default=None,
                        help="clean rounds shared by all pairs before the attack (default: the scale's; 0 = none)")
    parser.add_argument("--pairs", type=parse_pairs, default=None,
                        help="victim->attack pairs instead of the scale's, e.g. 9-0,9-1,0-9 (Tables I, II, V, VI)")
    parser.add_argument("--factors", type=parse_factors, default=None,
                        help="ablation: the factors to run, in order, e.g. chosen,previous (default: all; see README)")
    parser.add_argument("--variant", default="",
                        help="write the target's tables into <results-dir>/<target>-<variant> (e.g. a -c variant)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--report-only", action="store_true",
                        help="write the tables from the runs finished so far; run nothing")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    for item in args.config:
        key = item.split("=", 1)[0].strip()
        if key in SWEEP_KEYS:
            raise UserError(f"-c {key}: the sweep sets it for every run (choose the place with --results-dir)")
    if args.pretrain_rounds is not None and args.pretrain_rounds < 0:
        raise UserError(f"--pretrain-rounds: must be >= 0, got {args.pretrain_rounds}")
    setup = Setup(args.scale, args.config, args.pretrain_rounds, args.pairs, args.factors)
    plan = TARGETS[args.target](setup)
    results_dir = Path(args.results_dir or f"results/paper-{args.scale}").expanduser().resolve()
    print(f"{args.target} at scale {args.scale}: {len(plan.experiments)} experiments, results in {results_dir}",
          flush=True)
    if args.report_only:
        outcome = finished_runs(plan.experiments, results_dir)
    else:
        outcome = run_sweep(plan.experiments, run_simulation, results_dir, parallel=args.parallel,
                            progress=not args.no_progress)
    later = plan.then(outcome) if plan.then and not args.report_only else []
    if later:
        print(f"{args.target}: {len(later)} experiments that need the first ones' results", flush=True)
        second = run_sweep(later, run_simulation, results_dir, parallel=args.parallel, progress=not args.no_progress)
        outcome.skipped += [n for n in second.skipped if n not in outcome.finished]
        outcome.finished.update(second.finished)
        outcome.failed.update(second.failed)
    out = results_dir / (f"{args.target}-{args.variant}" if args.variant else args.target)
    write_json(out / "sweep.json", {"target": args.target, "scale": args.scale, "overrides": args.config,
                                    "command": sys.argv, "finished": {k: str(v) for k, v in outcome.finished.items()},
                                    "failed": outcome.failed})
    plan.report(outcome, out)
    print(f"{args.target}: {len(outcome.finished)} runs finished ({len(outcome.skipped)} before this command), "
          f"{len(outcome.failed)} failed; results in {out}", flush=True)
    if outcome.failed:
        for name, reason in outcome.failed.items():
            print(f"failed: {name}: {reason}", file=sys.stderr)
        raise SystemExit(1)
    return outcome


if __name__ == "__main__":
    run_cli(main)
