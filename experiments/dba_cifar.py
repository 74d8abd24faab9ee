#!/usr/bin/env python3
"""DBA on CIFAR-10 (Xie et al., ICLR 2020), the reference configuration, at full or reduced scale.

Two stages, as in the DBA reference: a clean model is trained for --pretrain-rounds
rounds, then the four attackers each poison once (single shot, rounds +3, +5, +7, +9
after pretraining) with their local trigger piece, and the run continues for
--attack-stage-rounds rounds; AA is measured with the global trigger and with each piece.

Full scale (a GPU run): 100 clients, 10 per round, Dirichlet 0.5, 200 clean rounds.

    python experiments/dba_cifar.py
    python experiments/dba_cifar.py --clients 20 --pretrain-rounds 3 --attack-stage-rounds 10 --subset 0.1   # CPU, minutes

--setting paper runs the cleansing paper's Table III variant instead: VGG11, victim
label truck (9) -> --attack-label, the DBA pieces as trigger.  The whole Table III
(truck -> every other class, one shared clean pretraining) is
``python experiments/paper.py table3``, built from ``table3_training`` below.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from fl_backdoor.cli import add_config_arguments, config_from_cli, run_cli
from fl_backdoor.sweeps import SWEEP_KEYS, Experiment, clean_pretraining
from server_strategies.simulation import run_simulation

# REFERENCE.md, DBA official CIFAR-10 configuration
REFERENCE = {
    "dataset": "cifar10", "model": "resnet18-slim", "partition": "dirichlet", "dirichlet-alpha": 0.5,
    "aggregation": "dba", "server-lr": 0.1, "lr": 0.1, "momentum": 0.9, "weight-decay": 5e-4,
    "batch-size": 64, "local-epochs": 2, "attack-mode": "all-to-one", "trigger": "dba", "attack-label": 2,
    "num-attackers": 4, "poison-lr": 0.05, "poison-epochs": 6, "poison-lr-steps": True,
    "poison-per-batch": 5, "gamma": 100, "attackers-always-selected": True,
}
PAPER = {**REFERENCE, "model": "vgg11", "attack-mode": "victim", "victim-label": 9}


def stage_configs(args: argparse.Namespace) -> tuple[dict, dict]:
    """Flat configs of the clean pretraining stage and of the attack stage."""
    base = dict(PAPER if args.setting == "paper" else REFERENCE)
    if args.setting == "paper":
        base["attack-label"] = args.attack_label
    base.update({"num-clients": args.clients, "fraction": args.per_round / args.clients,
                 "data-fraction": args.subset, "seed": args.seed, "test-subset": args.test_subset,
                 "gamma": args.per_round / base["server-lr"]})
    pretrain = {**base, "num-rounds": args.pretrain_rounds, "attack-rounds": "none",
                "run-name": f"{args.name}-pretrain"}
    p = args.pretrain_rounds
    attack = {**base, "num-rounds": args.attack_stage_rounds, "attack-rounds": f"{p + 3}/{p + 5}/{p + 7}/{p + 9}",
              "run-name": f"{args.name}-attack"}
    return pretrain, attack


def table3_training(args: argparse.Namespace, attack_labels: Sequence[int]) -> dict[int, Experiment]:
    """Table III: the attack stage of the paper setting for each attack label (truck -> AL).

    All of them start from ONE clean pretraining: its config does not depend on the
    attack label, so the sweep runs it once.  ``args`` are this script's options
    (``build_parser``), its -c overrides included.
    """
    runs = {}
    for label in attack_labels:
        pretrain, attack = stage_configs(argparse.Namespace(**{**vars(args), "setting": "paper",
                                                               "attack_label": label}))
        clean = clean_pretraining(_sweep_config(args, pretrain), args.pretrain_rounds, label="cifar-dba-pretrain")
        runs[label] = Experiment(f"cifar-dba-truck-al{label}-train", _sweep_config(args, attack), parent=clean)
    return runs


def _sweep_config(args: argparse.Namespace, stage: dict) -> dict:
    """A stage's flat config with the -c overrides, without the keys a sweep sets itself."""
    flat = config_from_cli(args, stage).to_flat()
    return {k: v for k, v in flat.items() if k not in SWEEP_KEYS}


def build_parser() -> argparse.ArgumentParser:
    """This script's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=("reference", "paper"), default="reference",
                        help="reference: DBA's ResNet-18 all-to-one (label 2); paper: VGG11, truck -> --attack-label")
    parser.add_argument("--attack-label", type=int, default=0, help="AL of the paper setting (truck -> AL)")
    parser.add_argument("--clients", type=int, default=100, help="number of clients (reference: 100)")
    parser.add_argument("--per-round", type=int, default=10, help="clients sampled per round (reference: 10)")
    parser.add_argument("--pretrain-rounds", type=int, default=200, help="clean rounds before the attack (reference: 200)")
    parser.add_argument("--attack-stage-rounds", type=int, default=20, help="rounds of the attack stage")
    parser.add_argument("--subset", type=float, default=1.0, help="fraction of the training data (smaller = faster)")
    parser.add_argument("--test-subset", type=int, default=0, help="test images to evaluate on (0 = all 10000)")
    parser.add_argument("--pretrained", default="", help="checkpoint of a clean pretraining run (skips stage 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="dba-cifar", help="prefix of the two run directories")
    add_config_arguments(parser)
    return parser


def main() -> None:
    """Pretrain clean (or reuse --pretrained), then attack; print both run directories."""
    args = build_parser().parse_args()
    pretrain, attack = stage_configs(args)
    checkpoint = args.pretrained
    if not checkpoint:
        pre_dir = run_simulation(config_from_cli(args, pretrain))
        print(f"clean pretraining: {pre_dir}")
        checkpoint = str(Path(pre_dir) / "checkpoints" / "trained.pt")
    attack_dir = run_simulation(config_from_cli(args, {**attack, "init-checkpoint": checkpoint}))
    print(f"attack stage: {attack_dir}")


if __name__ == "__main__":
    run_cli(main)
