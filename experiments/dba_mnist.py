#!/usr/bin/env python3
"""DBA's MNIST reference experiment against its centralized attack, on a CPU (Xie et al., ICLR 2020).

The configuration is the DBA reference code's (REFERENCE.md): 100 clients, 10 sampled
per round, Dirichlet 0.5; lr 0.1, poison lr 0.05 (x0.1 at 20% and 80% of its epochs),
momentum 0.9, weight decay 5e-4, batch 64; 1 benign / 10 poison epochs; 20 of 64
samples poisoned per batch, all-to-one to label 2; gamma 100 and server lr 0.1 (one
shot replaces the model); a clean model trained to round 10, then single shots at
rounds 12, 14, 16 and 18.

* DBA: four attackers, each stamping its own 1x4 bar, one shot each;
* centralized: one attacker (client 0) stamping the four bars together, shooting at the
  same four rounds, so both send four boosted updates of the same per-batch poison share.

Both continue from the same clean model to round 40.  AA is measured with the global
trigger (the four bars) on test images whose label is not 2, and for DBA with each bar
alone.

    python experiments/dba_mnist.py                       # about 10 minutes on 2 cores
    python experiments/dba_mnist.py --rounds 20 -c data-fraction=0.2   # a quick look

Outputs in --results-dir (default results/dba-mnist): runs/ (the three run directories),
table.md / table.csv, aa.png (AA per round), and the poisoned-sample counts per attack.
Rerunning skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by path: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.reports import Row, round_history
from fl_backdoor.cli import add_config_arguments, run_cli
from fl_backdoor.config import config_from_args, parse_round_spec
from fl_backdoor.federation_data import client_partitions
from fl_backdoor.plots import plot_curves
from fl_backdoor.run_dir import atomic_write_text, write_csv
from fl_backdoor.sweeps import SWEEP_KEYS, Experiment, SweepOutcome, clean_pretraining, run_sweep
from fl_backdoor.tables import Column, markdown_columns
from server_strategies.simulation import run_simulation

# REFERENCE.md, DBA official MNIST configuration
MNIST_REFERENCE: dict[str, Any] = {
    "dataset": "mnist", "model": "mnist-cnn", "partition": "dirichlet", "dirichlet-alpha": 0.5,
    "num-clients": 100, "fraction": 0.1, "aggregation": "dba", "server-lr": 0.1, "lr": 0.1, "momentum": 0.9,
    "weight-decay": 5e-4, "lr-decay": 1.0, "batch-size": 64, "local-epochs": 1, "attack-mode": "all-to-one",
    "attack-label": 2, "poison-lr": 0.05, "poison-epochs": 10, "poison-lr-steps": True, "poison-per-batch": 20,
    "gamma": 100, "attackers-always-selected": True,
}
CLEAN_ROUNDS = 10
SHOTS = (12, 14, 16, 18)
AFTER_SHOTS = 19  # the round the DBA paper reads AA at, once all four shots are in


@dataclass(frozen=True)
class Attacks:
    """The clean pretraining and the two attack stages that start from it."""

    pretrain: Experiment
    dba: Experiment
    centralized: Experiment


def attacks(rounds: int, overrides: list[str]) -> Attacks:
    """The three runs: clean to round 10, then DBA and the centralized attack to round ``rounds``."""
    def flat(values: dict[str, Any]) -> dict[str, Any]:
        cfg = config_from_args(overrides, {**MNIST_REFERENCE, **values})
        return {k: v for k, v in cfg.to_flat().items() if k not in SWEEP_KEYS}

    dba = flat({"trigger": "dba", "num-attackers": 4, "attack-rounds": "/".join(str(r) for r in SHOTS),
                "num-rounds": rounds - CLEAN_ROUNDS})
    pretrain = clean_pretraining(dba, CLEAN_ROUNDS, label="mnist-dba-pretrain")
    # the centralized attacker is client 0 of the same partition, trained from the same clean model
    centralized = flat({"trigger": "dba-global", "num-attackers": 1, "attack-rounds": ",".join(map(str, SHOTS)),
                        "num-rounds": rounds - CLEAN_ROUNDS})
    return Attacks(pretrain, Experiment("mnist-dba-attack", dba, parent=pretrain),
                   Experiment("mnist-centralized-attack", centralized, parent=pretrain))


def poisoned_samples(exp: Experiment) -> int:
    """Poisoned samples the attackers of a run train on over all their shots (20 of every batch of 64)."""
    cfg = exp.cfg
    sizes = [len(p) for p in client_partitions(cfg)]
    per_shot = {a: cfg.poison_epochs * sum(min(cfg.poison_per_batch, sizes[a] - start)
                                           for start in range(0, sizes[a], cfg.batch_size))
                for a in cfg.attackers}
    def shots(attacker: int) -> int:
        """Rounds the attacker poisons in: its ranges, or every round of the run for 'all'."""
        ranges = parse_round_spec(cfg.attack_spec(attacker), "attack-rounds")
        return cfg.num_rounds if ranges is None else sum(end - start + 1 for start, end in ranges)

    return sum(per_shot[a] * shots(a) for a in cfg.attackers)


def report(outcome: SweepOutcome, plan: Attacks, out: Path) -> None:
    """table.md/csv (TA and AA at rounds 10, 19 and the last; mean AA after the shots) and aa.png."""
    histories = {name: round_history(outcome, exp) for name, exp in (("DBA", plan.dba),
                                                                     ("centralized", plan.centralized))}
    rows: list[Row] = []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for name, history in histories.items():
        if history is None:
            continue
        by_round = {int(r["round"]): r for r in history}
        last = max(by_round)
        after = [float(by_round[r]["aa"]) for r in range(AFTER_SHOTS, last + 1) if r in by_round]
        row: Row = {"attack": name, "poisoned": poisoned_samples(plan.dba if name == "DBA" else plan.centralized),
                    "clean_ta": 100 * float(by_round[CLEAN_ROUNDS]["ta"]),
                    "ta19": 100 * float(by_round[AFTER_SHOTS]["ta"]), "aa19": 100 * float(by_round[AFTER_SHOTS]["aa"]),
                    "aa_after": 100 * sum(after) / len(after), "ta_last": 100 * float(by_round[last]["ta"]),
                    "aa_last": 100 * float(by_round[last]["aa"]), "last": last}
        for piece in range(4):
            key = f"aa_piece{piece}"
            if key in by_round[AFTER_SHOTS]:
                row[f"piece{piece}_19"] = 100 * float(by_round[AFTER_SHOTS][key])
        rows.append(row)
        rounds = [float(r) for r in sorted(by_round) if r > CLEAN_ROUNDS]
        curves[f"AA {name}"] = (rounds, [float(by_round[int(r)]["aa"]) for r in rounds])
        if name == "DBA":
            for piece in range(4):
                curves[f"AA DBA piece {piece}"] = (rounds, [float(by_round[int(r)][f"aa_piece{piece}"])
                                                          for r in rounds])
        curves[f"TA {name}"] = (rounds, [float(by_round[int(r)]["ta"]) for r in rounds])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "table.csv", rows)
    columns = [Column("Attack", "attack"), Column("Poisoned samples", "poisoned", "d"),
               Column("TA r10", "clean_ta"), Column("TA r19", "ta19"), Column("AA r19", "aa19")]
    columns += [Column(f"AA{p} r19", f"piece{p}_19") for p in range(4)]
    columns += [Column(f"mean AA r{AFTER_SHOTS}-end", "aa_after"), Column("TA end", "ta_last"),
                Column("AA end", "aa_last"), Column("end", "last", "d")]
    text = ("# DBA against the centralized attack, MNIST, DBA reference configuration\n\n"
            + markdown_columns(rows, columns, labels=1, average=False))
    atomic_write_text(out / "table.md", text)
    print(text, end="", flush=True)
    if curves:
        plot_curves(out / "aa.png", curves, xlabel="round", title="MNIST: DBA and centralized attack (shots 12-18)")


def main(argv: list[str] | None = None) -> None:
    """Run the three runs as a resumable sweep, then write the table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="last round of the attack stages (reference: 40)")
    parser.add_argument("--results-dir", default="results/dba-mnist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds <= SHOTS[-1]:
        parser.error(f"--rounds must be after the last shot (round {SHOTS[-1]})")
    plan = attacks(args.rounds, args.config)
    out = Path(args.results_dir)
    outcome = run_sweep([plan.dba, plan.centralized], run_simulation, out, progress=not args.no_progress)
    report(outcome, plan, out)


if __name__ == "__main__":
    run_cli(main)
