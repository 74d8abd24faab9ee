#!/usr/bin/env python3
"""Seconds of a client's candidate report (pruning-accuracy=clients): the cut model against the whole one.

A client measures its clean accuracy at every pruning level of the last conv layer and at
every Delta of AW's search.  ``candidate_report`` runs the part of a chain model before the
changed module once; the reference below runs the whole model at every candidate.  Both
give identical accuracies (checked here).  One torch thread, as a Ray actor has, best of
``--repeats``.  ``init-checkpoint`` measures a trained model (random weights time the same).

    python experiments/bench_candidates.py -c dataset=fashion-mnist -c init-checkpoint=runs/<run>/trained.pt
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from clients.local_training import client_model
from defenses.candidates import aw_accuracies, pruning_accuracies
from defenses.extreme_weights import delta_schedule, weight_stats
from defenses.neuron_ranking import MAX_PRUNING_LEVELS, pruning_levels
from fl_backdoor.cli import add_config_arguments, config_from_cli, run_cli
from fl_backdoor.federation_data import client_data
from fl_backdoor.models import build_model, layer_neurons, resolve_layer
from fl_backdoor.run_dir import load_checkpoint
from fl_backdoor.training import accuracy, layer_weight, pick_device
from server_strategies.phases import PRUNING_LAYER
from server_strategies.phases.aw import SMALLEST, START, STATS, STEP
from server_strategies.phases.candidates import candidate_report


def best_of(repeats: int, call: Callable[[], list[float]]) -> tuple[float, list[float]]:
    """Fastest of ``repeats`` calls, and what the calls returned."""
    times, result = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    """Time both ways for both kinds of candidate and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", type=int, default=1, help="client id whose data is measured")
    parser.add_argument("--repeats", type=int, default=3)
    add_config_arguments(parser)
    args = parser.parse_args()
    cfg = config_from_cli(args, {"dataset": "fashion-mnist"})
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    state = load_checkpoint(cfg.init_checkpoint)["state_dict"] if cfg.init_checkpoint else build_model(cfg).state_dict()
    model = client_model(cfg, state, None)
    layer = resolve_layer(model, PRUNING_LAYER.of(cfg))
    size = layer_neurons(model, layer)
    x, y = client_data(cfg, args.client, pick_device(cfg.device))
    order = torch.randperm(size).tolist()
    candidates = {"pruning": [float(c) for c in pruning_levels(size - 1, MAX_PRUNING_LEVELS)],
                  "aw": delta_schedule(START.of(cfg), STEP.of(cfg), SMALLEST.of(cfg))}

    def whole(m: torch.nn.Module) -> float:
        return accuracy(m, x, y, cfg.eval_batch_size)

    def client_report(kind: str, values: list[float]) -> list[float]:
        return candidate_report(cfg, args.client, state, None, kind, layer, order, values)[0]

    stats = weight_stats(layer_weight(model, layer), None, STATS.of(cfg))
    reference = {"pruning": lambda: pruning_accuracies(model, order, [int(c) for c in candidates["pruning"]],
                                                       layer, size, whole),
                 "aw": lambda: aw_accuracies(model, layer, stats, candidates["aw"], whole)}
    print(f"{cfg.model_name}, client {args.client}: {x.shape[0]} images, layer {layer}, 1 thread, "
          f"best of {args.repeats}")
    print("| candidates | count | whole model (s) | cut model (s) | speed-up |\n|---|---|---|---|---|")
    for kind, values in candidates.items():
        slow, expected = best_of(args.repeats, reference[kind])
        fast, got = best_of(args.repeats, partial(client_report, kind, values))
        if got != expected:
            raise SystemExit(f"{kind}: the cut model's accuracies differ from the whole model's")
        print(f"| {kind} | {len(values)} | {slow:.2f} | {fast:.2f} | {slow / fast:.1f}x |")


if __name__ == "__main__":
    run_cli(main)
