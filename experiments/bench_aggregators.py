#!/usr/bin/env python3
"""Seconds of one aggregation by each registered rule, against the paper's FedAvg, on the dataset's model.

The local models are the global model plus small seeded perturbations (the rules' cost
does not depend on what the updates mean), one per client of the config; FLTrust also
trains on the server's root data, as it does every round.  One torch thread, the best of
``--repeats`` calls per rule, all rules in one process, so the ratios compare like with like.

    python experiments/bench_aggregators.py -c dataset=fashion-mnist --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from flwr.app import ArrayRecord

from fl_backdoor.cli import add_config_arguments, config_from_cli, run_cli
from fl_backdoor.models import build_model
from server_strategies.aggregators import AGGREGATORS, apply_update, round_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rules", default="", help="comma-separated rules (default: every registered one)")
    add_config_arguments(parser)
    args = parser.parse_args()
    cfg = config_from_cli(args, {"dataset": "fashion-mnist"})
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    g = ArrayRecord({k: v.contiguous() for k, v in build_model(cfg).state_dict().items()})
    size = sum(a.numpy().size for a in g.values())
    rng = np.random.default_rng(cfg.seed)
    local = [apply_update(g, rng.normal(0.0, 0.01, size)) for _ in range(cfg.clients_per_round)]
    rules = [r.strip() for r in args.rules.split(",") if r.strip()] or list(AGGREGATORS.names())
    best: dict[str, float] = {}
    for rule in rules:
        call = AGGREGATORS[rule]
        times = []
        for _ in range(args.repeats):
            context = round_context(rule, 1, range(len(local)), {})
            started = time.perf_counter()
            call(g, local, cfg, **context)
            times.append(time.perf_counter() - started)
        best[rule] = min(times)
    base = best.get("paper")
    print(f"{cfg.dataset}, {cfg.model_name} ({size:,} parameters), {len(local)} clients, best of {args.repeats}")
    print("| rule | seconds | x FedAvg (paper) |\n|---|---|---|")
    for rule, seconds in best.items():
        print(f"| {rule} | {seconds:.4f} | {seconds / base:.1f} |" if base else f"| {rule} | {seconds:.4f} | |")


if __name__ == "__main__":
    run_cli(main)
