#!/usr/bin/env python3
"""DBA on CIFAR-10 (Xie et al., ICLR 2020), the reference configuration, at full or reduced scale.

Two stages, as in the DBA reference: a clean model is trained for --pretrain-rounds
rounds, then the four attackers each poison once (single shot, rounds +3, +5, +7, +9
after pretraining) with their local trigger piece, and the run continues for
--attack-stage-rounds rounds; AA is measured with the global trigger and with each piece.

Full scale (a GPU run): 100 clients, 10 per round, Dirichlet 0.5, 200 clean rounds.

    python experiments/dba_cifar.py
    python experiments/dba_cifar.py --clients 20 --pretrain-rounds 3 --attack-stage-rounds 10 \\
        --subset 0.1                                                           # CPU, minutes

--setting paper runs the cleansing paper's Table III variant instead: VGG11, victim
label truck (9) -> --attack-label, the DBA pieces as trigger.  The whole Table III
(truck -> every other class, one shared clean pretraining) is
``python experiments/paper.py table3``, built from ``table3_training`` below.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fl_backdoor.cli import add_config_arguments, config_from_cli, run_cli
from fl_backdoor.config import ExperimentConfig, UserError, config_from_args
from fl_backdoor.federation_data import clients_holding
from fl_backdoor.sweeps import SWEEP_KEYS, Experiment, clean_pretraining
from server_strategies.simulation import run_simulation

Setting = Literal["reference", "paper"]

# REFERENCE.md, DBA official CIFAR-10 configuration
REFERENCE: dict[str, Any] = {
    "dataset": "cifar10", "model": "resnet18-slim", "partition": "dirichlet", "dirichlet-alpha": 0.5,
    "aggregation": "dba", "server-lr": 0.1, "lr": 0.1, "momentum": 0.9, "weight-decay": 5e-4,
    "batch-size": 64, "local-epochs": 2, "attack-mode": "all-to-one", "trigger": "dba", "attack-label": 2,
    "num-attackers": 4, "poison-lr": 0.05, "poison-epochs": 6, "poison-lr-steps": True,
    "poison-per-batch": 5, "gamma": 100, "attackers-always-selected": True,
}
PAPER: dict[str, Any] = {**REFERENCE, "model": "vgg11", "attack-mode": "victim", "victim-label": 9}


@dataclass(frozen=True)
class Size:
    """How large a DBA run is; the defaults are the reference's full scale."""

    clients: int = 100
    per_round: int = 10              # clients sampled per round
    pretrain_rounds: int = 200       # clean rounds before the attack
    attack_stage_rounds: int = 20
    subset: float = 1.0              # fraction of the training data
    test_subset: int = 0             # test images to evaluate on (0 = all 10000)


def stage_configs(size: Size, setting: Setting = "reference", attack_label: int = 0, seed: int = 0,
                  name: str = "dba-cifar") -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat configs of the clean pretraining stage and of the attack stage (runs ``<name>-pretrain``,
    ``<name>-attack``); ``attack_label`` is the paper setting's AL."""
    base = dict(PAPER if setting == "paper" else REFERENCE)
    if setting == "paper":
        base["attack-label"] = attack_label
    base.update({"num-clients": size.clients, "fraction": size.per_round / size.clients,
                 "data-fraction": size.subset, "seed": seed, "test-subset": size.test_subset,
                 "gamma": size.per_round / base["server-lr"]})
    pretrain = {**base, "num-rounds": size.pretrain_rounds, "attack-rounds": "none", "run-name": f"{name}-pretrain"}
    p = size.pretrain_rounds
    attack = {**base, "num-rounds": size.attack_stage_rounds, "attack-rounds": f"{p + 3}/{p + 5}/{p + 7}/{p + 9}",
              "run-name": f"{name}-attack"}
    return pretrain, attack


def with_victim_attackers(*stages: dict[str, Any]) -> None:
    """Victim mode: make the attackers the first clients whose data holds victim-label images.

    On a Dirichlet split the default attackers 0..3 often hold none (CIFAR-10, 100
    clients, alpha 0.5, seed 0: 0, 254, 62 and 141 trucks), and such an attacker has
    nothing to poison (fl_backdoor.federation_data.check_attackers_data stops the run).
    The stages are changed in place and get the same attacker ids.
    """
    cfg = ExperimentConfig.from_flat({k: v for k, v in stages[0].items() if k not in SWEEP_KEYS})
    if cfg.attack_mode != "victim" or cfg.attacker_ids:
        return
    ids = clients_holding(cfg, cfg.victim_label)[:cfg.num_attackers]
    if len(ids) < cfg.num_attackers:
        raise UserError(f"only {len(ids)} of {cfg.num_clients} clients hold images of victim label "
                        f"{cfg.victim_label}, {cfg.num_attackers} attackers need them (more clients or data)")
    for stage in stages:
        stage["attacker-ids"] = ",".join(str(c) for c in ids)


def table3_training(size: Size, attack_labels: Sequence[int], settings: Mapping[str, Any] | None = None,
                    overrides: Sequence[str] = ()) -> dict[int, Experiment]:
    """Table III: the attack stage of the paper setting for each attack label (truck -> AL).

    All of them start from ONE clean pretraining: its config does not depend on the
    attack label, so the sweep runs it once.  ``settings`` and then the -c ``overrides``
    apply on top of both stages.
    """
    def sweep_config(stage: dict[str, Any]) -> dict[str, Any]:
        flat = config_from_args(list(overrides), {**stage, **(settings or {})}).to_flat()
        return {k: v for k, v in flat.items() if k not in SWEEP_KEYS}

    runs = {}
    for label in attack_labels:
        pretrain, attack = (sweep_config(stage) for stage in stage_configs(size, "paper", label))
        with_victim_attackers(pretrain, attack)
        clean = clean_pretraining(pretrain, size.pretrain_rounds, label="cifar-dba-pretrain")
        runs[label] = Experiment(f"cifar-dba-truck-al{label}-train", attack, parent=clean)
    return runs


def build_parser() -> argparse.ArgumentParser:
    """This script's options."""
    d = Size()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=("reference", "paper"), default="reference",
                        help="reference: DBA's ResNet-18 all-to-one (label 2); paper: VGG11, truck -> --attack-label")
    parser.add_argument("--attack-label", type=int, default=0, help="AL of the paper setting (truck -> AL)")
    parser.add_argument("--clients", type=int, default=d.clients, help="number of clients (reference: 100)")
    parser.add_argument("--per-round", type=int, default=d.per_round, help="clients sampled per round (reference: 10)")
    parser.add_argument("--pretrain-rounds", type=int, default=d.pretrain_rounds,
                        help="clean rounds before the attack (reference: 200)")
    parser.add_argument("--attack-stage-rounds", type=int, default=d.attack_stage_rounds,
                        help="rounds of the attack stage")
    parser.add_argument("--subset", type=float, default=d.subset,
                        help="fraction of the training data (smaller = faster)")
    parser.add_argument("--test-subset", type=int, default=d.test_subset,
                        help="test images to evaluate on (0 = all 10000)")
    parser.add_argument("--pretrained", default="", help="checkpoint of a clean pretraining run (skips stage 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="dba-cifar", help="prefix of the two run directories")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Pretrain clean (or reuse --pretrained), then attack; print both run directories."""
    args = build_parser().parse_args(argv)
    size = Size(clients=args.clients, per_round=args.per_round, pretrain_rounds=args.pretrain_rounds,
                attack_stage_rounds=args.attack_stage_rounds, subset=args.subset, test_subset=args.test_subset)
    pretrain, attack = (config_from_cli(args, stage).to_flat()
                        for stage in stage_configs(size, args.setting, args.attack_label, args.seed, args.name))
    with_victim_attackers(pretrain, attack)
    pretrain["defense"] = "train-only"  # a -c defense is for the attacked model, not the clean one
    checkpoint = args.pretrained
    if not checkpoint:
        pre_dir = run_simulation(ExperimentConfig.from_flat(pretrain))
        print(f"clean pretraining: {pre_dir}")
        checkpoint = str(Path(pre_dir) / "checkpoints" / "trained.pt")
    attack_dir = run_simulation(ExperimentConfig.from_flat({**attack, "init-checkpoint": checkpoint}))
    print(f"attack stage: {attack_dir}")


if __name__ == "__main__":
    run_cli(main)
