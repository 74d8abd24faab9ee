"""The paper's tables and figures as plans: each target's experiments and the report written from their results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.compare_defenses import ComparisonRun, comparison_of
from experiments.plans import FollowUp, Plan, once_trained
from experiments.reference import reference
from experiments.reports import (
    Curves,
    Panels,
    Row,
    bar_panels,
    curve_figure,
    curves_per_round,
    defense_seconds,
    delta_curves,
    finished_curves,
    mean,
    pair_table,
    phase_columns,
    phase_seconds,
    row_of,
    write_table,
)
from experiments.scales import FMNIST, MNIST, Pair, Setup, defended
from fl_backdoor.config import UserError
from fl_backdoor.plots import plot_bars, plot_curves, plot_scatter
from fl_backdoor.run_dir import atomic_write_text, read_csv, write_csv
from fl_backdoor.sweeps import Experiment, SweepOutcome
from fl_backdoor.tables import PHASE_TITLES, Column, markdown_columns
from server_strategies.phases import MODES, defense_steps

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --- Tables I-III: one row per pair ----------------------------------------------------------------------
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

    def names(row: Row) -> None:
        row["vl"], row["al"] = CIFAR_CLASSES[int(row["vl"])], CIFAR_CLASSES[int(row["al"])]
    return Plan(runs, pair_table("Table III: CIFAR-10 under the distributed backdoor attack", runs,
                                 ["training", "fp", "fp-aw", "all"], names))


# --- Table IV: the centralized defenses ------------------------------------------------------------------
def table4(setup: Setup) -> Plan:
    """Table IV: federated cleansing against centralized defenses (Neural Cleanse, ANP, HaS-Net, Fine-Pruning)."""
    scale = setup.scale
    trainings = {"MNIST": [setup.training(MNIST, victim_label=v, attack_label=a) for v, a in scale.mnist_pairs],
                 "Fashion-MNIST": [setup.training(FMNIST, victim_label=v, attack_label=a)
                                   for v, a in scale.fmnist_pairs],
                 "CIFAR-10": list(setup.cifar_training(scale.cifar_labels).values())}
    # each training's model: defended by the federated All mode, and compared on by a run of its own
    cases = {dataset: [(defended(t, "all"), comparison_of(t, scale.compare)) for t in runs]
             for dataset, runs in trainings.items()}
    comparisons = [c for pairs in cases.values() for _, c in pairs]

    def report(outcome: SweepOutcome, out: Path) -> None:
        long_rows: list[Row] = []
        missing: list[str] = []
        for dataset, pairs in cases.items():
            for run, comparison in pairs:
                row, compared = row_of(outcome, run), outcome.run_dir(comparison)
                if row is None or compared is None:
                    missing += [e.name for e, found in ((run, row), (comparison, compared)) if found is None]
                    continue
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
            summary: Row = {"dataset": dataset, "pairs": len({r["pair"] for r in mine})}
            for d in defenses:
                for m in ("ta", "aa"):
                    summary[f"{d}_{m}"] = mean([r[m] for r in mine if r["defense"] == d])
            rows.append(summary)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "comparison.csv", long_rows)
        columns = [Column("Dataset", "dataset"), Column("Pairs", "pairs")] + [
            Column(f"{d} {m.upper()}", f"{d}_{m}") for d in defenses for m in ("ta", "aa")]
        write_table(out, "Table IV: comparison with centralized defenses (averages over the pairs)", rows, columns,
                    missing=missing)
        if rows:
            plot_bars(out / "table.png", [r["dataset"] for r in rows], bar_panels(rows, {d: d for d in defenses}),
                      "Table IV")
    return Plan([run for pairs in cases.values() for run, _ in pairs], report,
                then=FollowUp(once_trained(comparisons), ComparisonRun(scale.compare)))


# --- Tables V-VII ----------------------------------------------------------------------------------------
def table5(setup: Setup) -> Plan:
    """Table V: RAP against MVP pruning on MNIST (both on the same trained model)."""
    cases = []
    for v, a in setup.scale.mnist_pairs:
        training = setup.training(MNIST, victim_label=v, attack_label=a)
        cases.append((defended(training, "fp", pruning_method="rap"), defended(training, "fp", pruning_method="mvp")))

    def report(outcome: SweepOutcome, out: Path) -> None:
        rows: list[Row] = []
        missing: list[str] = []
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
                      bar_panels(rows, {"Training": "training", "Ranking V": "rap", "Majority V": "mvp"}), "Table V")
    return Plan([e for case in cases for e in case], report)


def table6(setup: Setup) -> Plan:
    """Table VI: AW only, on a small (8, 16) and a large (20, 50) MNIST CNN."""
    models = {"small": "8,16", "large": "20,50"}
    cases = [{size: defended(setup.training(MNIST, victim_label=v, attack_label=a, model_widths=w), "aw")
              for size, w in models.items()} for v, a in setup.scale.mnist_pairs]

    def report(outcome: SweepOutcome, out: Path) -> None:
        rows: list[Row] = []
        missing: list[str] = []
        for case in cases:
            found = {size: row_of(outcome, e) for size, e in case.items()}
            missing += [case[s].name for s, r in found.items() if r is None]
            present = {size: r for size, r in found.items() if r is not None}
            if len(present) < len(found):
                continue
            row = {"vl": present["small"]["vl"], "al": present["small"]["al"]}
            for size, r in present.items():
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
                      bar_panels(rows, {f"{size} NN": size for size in models},
                                 (("TA after AW", "ta"), ("AA after AW", "aa"))), "Table VI")
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
                      bar_panels(rows, {PHASE_TITLES[p]: p for p in ("training", "fp", "fp-aw")}), "Table VII")
    return Plan(list(runs.values()), report)


# --- the figures -----------------------------------------------------------------------------------------
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
        curves: Curves = {}
        rows: list[Row] = []
        found, long_rows, missing = finished_curves(outcome, runs, "aw_curve_all.csv", "selected")
        for k, data, row in found:
            curves.update(delta_curves(data, "delta", f" {k} clients"))
            rows.append({**row, "selected": k})
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
            curves: Curves = {f"{m.upper()} {PHASE_TITLES[p]}": (xs, [r[f"{p}_{m}"] / 100 for r in rows])
                              for p in ("fp", "all") for m in ("ta", "aa")}
            plot_curves(out / "attackers.png", curves, xlabel="attackers", title="Fig. 8: attackers among 10 clients")
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
        rows: list[Row] = []
        missing: list[str] = []
        for task, (training, defense) in runs.items():
            seconds = phase_seconds(outcome, training, defense)
            if seconds is None:
                missing.append(defense.name)
                continue
            rows.append({"task": task, **seconds, "run": defense.name})
        columns = [Column("task", "task")] + [Column(f"{p} (s)", p) for p in phases]
        write_table(out, "Fig. 9: seconds per phase", rows, columns, labels=1, missing=missing, average=False)
        if rows:
            panels: Panels = {"seconds": {p: [r[p] for r in rows] for p in phases}}
            plot_bars(out / "phases.png", [r["task"] for r in rows], panels, "Fig. 9: time per phase",
                      ylabel="seconds")
    return Plan([d for _, d in runs.values()], report)


# --- Section VI-B: adaptive attackers --------------------------------------------------------------------
ADAPTIVE = ("none", "rank-manipulation", "pruning-aware", "pruning-aware-oracle", "aw-aware")


def adaptive(setup: Setup) -> Plan:
    """Section VI-B: All mode against attackers who know the defense, next to the plain attacker (Fashion-MNIST)."""
    pairs = setup.scale.fmnist_pairs
    baseline = {pair: setup.training(FMNIST, victim_label=pair[0], attack_label=pair[1]) for pair in pairs}
    cases: dict[Pair, dict[str, Experiment]] = {}
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
        rows: list[Row] = []
        long_rows: list[Row] = []
        missing: list[str] = []
        for (v, a), case in cases.items():
            row: Row = {"vl": v, "al": a}
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
                return [mean([r[key] for r in long_rows if r["attacker"] == k]) for k in ADAPTIVE]
            plot_bars(out / "table.png", list(ADAPTIVE),
                      {"TA": {"Training": average("training_ta"), "All": average("all_ta")},
                       "AA": {"Training": average("training_aa"), "All": average("all_aa")}},
                      "Adaptive attackers (averages over the pairs)")
    return Plan([e for case in cases.values() for e in case.values()], report, then=FollowUp(oracle))


# --- training-time defenses (issue 13) --------------------------------------------------------------------
ROBUST_RULES = ("paper", "krum", "multikrum", "bulyan", "median", "trimmed-mean", "norm-clip", "flame", "fltrust",
                "foolsgold", "dp-fixed-clip")
# the sweep's order: the plain boosted attacker, the adaptive ones (the "done means"), then DBA (four
# attackers, one piece each)
ROBUST_ATTACKS: dict[str, dict[str, Any]] = {
    "none": {}, "pruning-aware": {"adaptive_attack": "pruning-aware"}, "aw-aware": {"adaptive_attack": "aw-aware"},
    "dba": {"trigger": "dba", "num_attackers": 4}}


def robust(setup: Setup) -> Plan:
    """Every aggregation rule against each attacker on Fashion-MNIST: TA/AA after training and after the All
    cleansing, whom the rule flagged during training, and its seconds per round."""
    rules = setup.rules or list(ROBUST_RULES)
    cases: list[tuple[str, str, Experiment]] = []
    for attack in ROBUST_ATTACKS:
        for rule in rules:
            for v, a in setup.scale.fmnist_pairs:
                training = setup.training(FMNIST, victim_label=v, attack_label=a, aggregation=rule,
                                          **ROBUST_ATTACKS[attack])
                tag = "-dba" if attack == "dba" else ""
                if rule != "paper" or tag:  # FedAvg's other runs are Table II's and the adaptive target's own
                    label = training.label.replace("-train", f"{tag}-{rule}-train")
                    training = Experiment(label, training.config, parent=training.parent)
                cases.append((rule, attack, defended(training, "all")))

    def detection(outcome: SweepOutcome, run: Experiment) -> Row:
        """Flags summed and aggregation seconds averaged over the training rounds of the run's training; DP's
        epsilon after its last round."""
        run_dir = outcome.run_dir(run.parent) if run.parent else None
        rows = [r for r in read_csv(run_dir / "metrics.csv") if r["phase"] == "train"] if run_dir else []
        return {"tp": sum(int(r.get("flagged_attackers") or 0) for r in rows),
                "fp": sum(int(r.get("flagged_benign") or 0) for r in rows),
                "aggregate_seconds": mean([r.get("aggregate_seconds") for r in rows]),
                "epsilon": mean([rows[-1].get("epsilon")] if rows else [])}

    def report(outcome: SweepOutcome, out: Path) -> None:
        keys = ["training_ta", "training_aa", "all_ta", "all_aa", "tp", "fp", "aggregate_seconds", "epsilon"]
        rows: list[Row] = []
        averages: list[Row] = []
        missing: list[str] = []
        for attack in ROBUST_ATTACKS:
            for rule in rules:
                runs = [e for r, k, e in cases if r == rule and k == attack]
                mine = [{**found, **detection(outcome, e)} for e in runs if (found := row_of(outcome, e))]
                missing += [e.name for e in runs if outcome.run_dir(e) is None]
                rows += [{"attack": attack, "aggregation": rule, **r} for r in mine]
                averages.append({"attack": attack, "aggregation": rule, "pairs": len(mine),
                                 **{k: mean([r.get(k) for r in mine]) for k in keys}})
        columns = [Column("Attacker", "attack"), Column("Aggregation", "aggregation"), Column("Pairs", "pairs", "d"),
                   *phase_columns(("training", "all"))[2:], Column("TP", "tp", ".1f"), Column("FP", "fp", ".1f"),
                   Column("Aggregation s/round", "aggregate_seconds", ".4f"), Column("DP epsilon", "epsilon", ".1f")]
        write_table(out, "Training-time defenses on Fashion-MNIST (averages over the finished pairs; TP/FP: "
                         "attacking/honest client-rounds the rule flagged during training)", averages, columns,
                    labels=3, missing=missing, average=False)
        write_csv(out / "pairs.csv", rows)
        plain = [r for r in averages if r["attack"] == "none"]
        if any(r["pairs"] for r in plain):
            plot_bars(out / "table.png", [r["aggregation"] for r in plain],
                      {"TA": {"Training": [r["training_ta"] for r in plain], "All": [r["all_ta"] for r in plain]},
                       "AA": {"Training": [r["training_aa"] for r in plain], "All": [r["all_aa"] for r in plain]}},
                      "Aggregation rules against the boosted attacker, before and after cleansing")
    return Plan([e for _, _, e in cases], report)


# --- the field's attacks (issue 14) ----------------------------------------------------------------------------
BACKDOORS: dict[str, dict[str, Any]] = {"plain": {}, "pgd": {"adaptive_attack": "pgd"},
                                        "neurotoxin": {"adaptive_attack": "neurotoxin"}, "blend": {"trigger": "blend"}}
BACKDOOR_RULES = ("paper", "norm-clip", "flame")
# untargeted: two attackers of ten (with one, ALIE's z_max is 0 and its update is the honest mean)
UNTARGETED: dict[str, dict[str, Any]] = {
    "none": {"num_attackers": 0}, "label-flip": {"adaptive_attack": "label-flip", "num_attackers": 2},
    **{kind: {"byzantine_attack": kind, "num_attackers": 2} for kind in ("alie", "ipm", "minmax")}}
UNTARGETED_RULES = ("paper", "krum", "median", "trimmed-mean")


def attacks(setup: Setup) -> Plan:
    """The field's attacks on Fashion-MNIST: each backdoor (plain, PGD, Neurotoxin, blended) under FedAvg, norm
    clipping and FLAME, before and after the All cleansing, on 3 pairs; label flipping and the Byzantine attacks
    (ALIE, IPM, MinMax) under FedAvg, Krum, median and trimmed mean: TA after training."""
    pairs = setup.scale.fmnist_pairs[:3]
    backdoor_rules = [r for r in BACKDOOR_RULES if setup.rules is None or r in setup.rules]
    untargeted_rules = [r for r in UNTARGETED_RULES if setup.rules is None or r in setup.rules]
    if not backdoor_rules and not untargeted_rules:
        raise UserError(f"--rules {','.join(setup.rules or [])}: the attacks target runs only "
                        f"{', '.join(dict.fromkeys([*BACKDOOR_RULES, *UNTARGETED_RULES]))}")

    def training(label: str, v: int, a: int, rule: str, changes: dict[str, Any]) -> Experiment:
        run = setup.training(FMNIST, victim_label=v, attack_label=a, aggregation=rule, **changes)
        if label == "plain" and rule == "paper":
            return run  # Table II's own run
        return Experiment(f"fmnist-{v}to{a}-{label}-{rule}-train", run.config, parent=run.parent)

    backdoors = {(kind, rule, pair): defended(training(kind, *pair, rule, changes), "all")
                 for kind, changes in BACKDOORS.items() for rule in backdoor_rules for pair in pairs}
    v, a = pairs[0]  # no trigger: the pair does not matter
    untargeted = {(kind, rule): training(kind, v, a, rule, changes)
                  for kind, changes in UNTARGETED.items() for rule in untargeted_rules}

    def report(outcome: SweepOutcome, out: Path) -> None:
        missing = [e.name for e in [*backdoors.values(), *untargeted.values()] if outcome.run_dir(e) is None]
        rows: list[Row] = []
        for kind in BACKDOORS:
            for rule in backdoor_rules:
                found = [r for pair in pairs if (r := row_of(outcome, backdoors[(kind, rule, pair)]))]
                rows.append({"attack": kind, "aggregation": rule, "pairs": len(found),
                             **{k: mean([r.get(k) for r in found])
                                for k in ("training_ta", "training_aa", "all_ta", "all_aa")}})
        columns = [Column("Attack", "attack"), Column("Aggregation", "aggregation"), Column("Pairs", "pairs", "d"),
                   *phase_columns(("training", "all"))[2:]]
        write_table(out, "Backdoor attacks on Fashion-MNIST (averages over the finished pairs)", rows, columns,
                    labels=3, missing=missing, average=False)
        ta = [{"attack": kind, **{rule: (r or {}).get("training_ta") for rule in untargeted_rules
                                  for r in [row_of(outcome, untargeted[(kind, rule)])]}}
              for kind in UNTARGETED]
        untargeted_out = out / "untargeted"
        write_table(untargeted_out, f"Untargeted attacks on Fashion-MNIST ({v}->{a} partition, 2 attackers of 10): "
                                    f"TA after training", ta,
                    [Column("Attack", "attack"), *[Column(rule, rule) for rule in untargeted_rules]],
                    labels=1, average=False)
    return Plan([*backdoors.values(), *untargeted.values()], report)


# --- post-training defenses against each other (issue 17) ----------------------------------------------------
# rows: each post-training defense and the compositions worth comparing; "all" is the paper's mode (RAP)
MATRIX_DEFENSES = {"all": "all", "all-sam": "prune,aw?,finetune-sam,aw", "finetune": "finetune",
                   "finetune-sam": "finetune-sam", "clp": "clp", "clp-finetune": "clp,finetune",
                   "ibau-server": "ibau-server", "ibau": "ibau", "prune-ibau-aw": "prune,ibau,aw",
                   "rnp-server": "rnp-server", "rnp": "rnp", "anp-server": "anp-server", "anp": "anp",
                   "anp-liar": "anp", "trigger-inversion": "trigger-inversion",
                   "inversion-liar": "trigger-inversion", "inversion-server": "trigger-inversion",
                   "inversion-liar-server": "trigger-inversion"}
# rows whose defense runs with other settings on the same trained models (issue 41): against attackers who lie in
# its queries, or unlearning the clients' flagged trigger on the server
MATRIX_CHANGES: dict[str, dict[str, Any]] = {"anp-liar": {"adaptive_attack": "anp-aware"},
                                             "inversion-liar": {"adaptive_attack": "inversion-aware"},
                                             "inversion-server": {"inversion_unlearning": "server"},
                                             "inversion-liar-server": {"adaptive_attack": "inversion-aware",
                                                                       "inversion_unlearning": "server"}}


FMNIST_BN = "fmnist-cnn-bn"  # FashionCNN with batch norm after each layer but the last
BN_FEDERATION = {"model": FMNIST_BN, "replacement_statistics": "own"}


def matrix(setup: Setup) -> Plan:
    """Every post-training defense on the same trained models: Table II and Table I (3 pairs each), a 9-pixel
    trigger with 3 attackers, DBA on MNIST, the adaptive attackers and the field's backdoors (issue 14):
    TA/AA after the defense and its seconds, with a TA-against-AA scatter plot."""
    def fmnist(v: int, a: int, **changes: Any) -> Experiment:
        return setup.training(FMNIST, victim_label=v, attack_label=a, **changes)

    def renamed(label: str, run: Experiment) -> Experiment:
        return Experiment(run.label.replace("-train", f"-{label}-train"), run.config, parent=run.parent)

    f3, m3 = setup.scale.fmnist_pairs[:3], setup.scale.mnist_pairs[:3]
    pixel9x3 = {"trigger": "pixel-9", "num_attackers": 3}
    settings: dict[str, list[Experiment]] = {
        "Table II": [fmnist(v, a) for v, a in f3],
        # the same federations with batch norm (issue 40, part 5), beside the rows without it; the attackers send
        # their running statistics unscaled, as the server refuses the negative variances model replacement sends
        "Table II, BN": [renamed("bn", fmnist(v, a, **BN_FEDERATION)) for v, a in f3],
        "Table I": [setup.training(MNIST, victim_label=v, attack_label=a) for v, a in m3],
        "9 pixels, 3 attackers": [renamed("pixel9x3", fmnist(v, a, **pixel9x3)) for v, a in f3],
        "9 pixels, 3 attackers, BN": [renamed("pixel9x3-bn", fmnist(v, a, **BN_FEDERATION, **pixel9x3))
                                      for v, a in f3],
        "DBA on MNIST": [renamed("dba", setup.training(MNIST, victim_label=v, attack_label=a, trigger="dba",
                                                       num_attackers=4)) for v, a in m3],
        **{kind: [fmnist(v, a, adaptive_attack=kind) for v, a in f3] for kind in ("pruning-aware", "aw-aware")},
        # the attacks target's FedAvg runs of issue 14's backdoors
        **{kind: [Experiment(f"fmnist-{v}to{a}-{kind}-paper-train", fmnist(v, a, **BACKDOORS[kind]).config)
                  for v, a in f3] for kind in ("pgd", "neurotoxin", "blend")}}
    chosen = {name: defense for name, defense in MATRIX_DEFENSES.items()
              if setup.defenses is None or name in setup.defenses}
    cells = {(name, setting, i): (defended(training, "all") if defense == "all" else
                                  training.child(training.label.replace("-train", f"-{name}"), defense=defense,
                                                 **MATRIX_CHANGES.get(name, {})))
             for setting, trainings in settings.items() for i, training in enumerate(trainings)
             for name, defense in chosen.items()}

    def measured(outcome: SweepOutcome, run: Experiment, defense: str) -> Row | None:
        """TA/AA (percent) after the defense's last step, the training's, and the defense's seconds."""
        results = outcome.results(run)
        if results is None:
            return None
        phases = results["phases"]
        final = phases[defense_steps(MODES.get(defense, defense))[-1].result]
        seconds = defense_seconds(results)
        return {"ta": 100.0 * final["ta"], "aa": 100.0 * final["aa"], "training_ta": 100.0 * phases["training"]["ta"],
                "training_aa": 100.0 * phases["training"]["aa"], "seconds": seconds}

    def report(outcome: SweepOutcome, out: Path) -> None:
        long_rows: list[Row] = []
        missing: list[str] = []
        for (name, setting, i), run in cells.items():
            found = measured(outcome, run, chosen[name])
            if found is None:
                missing.append(run.name)
                continue
            long_rows.append({"defense": name, "setting": setting, "pair": i, "run": run.name, **found})
        # the trained model of each pair once, from whichever of its defense runs finished
        trained = {(r["setting"], r["pair"]): {"defense": "training", "setting": r["setting"],
                                               "ta": r["training_ta"], "aa": r["training_aa"]} for r in long_rows}
        rows: list[Row] = []
        for name in ["training", *chosen]:
            mine = list(trained.values()) if name == "training" else [r for r in long_rows if r["defense"] == name]
            row: Row = {"defense": name}
            for setting in settings:
                row[f"{setting} TA"] = mean([r["ta"] for r in mine if r["setting"] == setting])
                row[f"{setting} AA"] = mean([r["aa"] for r in mine if r["setting"] == setting])
            row["seconds"] = mean([r.get("seconds") for r in mine]) if name != "training" else None
            rows.append(row)
        columns = [Column("Defense", "defense"), *[Column(f"{s} {m}", f"{s} {m}") for s in settings
                                                   for m in ("TA", "AA")], Column("Seconds", "seconds", ".0f")]
        write_table(out, "Post-training defenses (averages over the finished pairs of each setting)", rows, columns,
                    labels=1, missing=missing, average=False)
        write_csv(out / "cells.csv", long_rows)
        points = {f"{r['defense']} | {s}": (r[f"{s} TA"], r[f"{s} AA"]) for r in rows[1:] for s in settings
                  if r[f"{s} TA"] is not None}
        if points:
            plot_scatter(out / "scatter.png", points, xlabel="TA (%)", ylabel="AA (%)",
                         title="Post-training defenses: one point per defense and setting")
    return Plan(list(cells.values()), report)


# --- the cleansing-fidelity ablation (README "Which reading of the paper") --------------------------------
# The behaviour before the faithful defaults: every factor below but the first three is measured as a change of it
# alone.
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
    "ft-attack-benign": Factor("attackers train honestly during fine-tuning",
                               {**PREVIOUS, "finetune-attack": "benign"}),
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
        pair_columns = phase_columns(ABLATION_PHASES) + [Column("Pruned", "pruned", "d"),
                                                         Column("Delta", "delta", ".2f"),
                                                         Column("FT rounds", "ft_rounds", "d")]
        rows: list[Row] = []
        averages: list[Row] = []
        missing: list[str] = []
        sections: list[str] = []
        for name in names:
            for method in ("rap", "mvp"):
                runs = [e for n, m, e in cases if n == name and m == method]
                mine = [r for r in (row_of(outcome, e) for e in runs) if r is not None]
                missing += [e.name for e in runs if outcome.run_dir(e) is None]
                rows += [{"factor": name, "method": method, **r} for r in mine]
                averages.append({"factor": name, "method": method.upper(), "pairs": len(mine),
                                 **{k: mean([r.get(k) for r in mine]) for k in keys}})
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


TARGETS: dict[str, Callable[[Setup], Plan]] = {
    "table1": table1, "table2": table2, "table3": table3, "table4": table4, "table5": table5, "table6": table6,
    "table7": table7, "fig3": fig3, "fig5": fig5, "fig6": fig6, "fig7": fig7, "fig8": fig8, "fig9": fig9,
    "fig10": fig10, "adaptive": adaptive, "ablation": ablation, "robust": robust, "attacks": attacks,
    "matrix": matrix, "reference": reference,
}
