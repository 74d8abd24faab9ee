#!/usr/bin/env python3
"""Throughput of one client's local epoch: the project's client job against a bare PyTorch loop.

Both train the same model on the same client data for the same epochs with one torch
thread (as a Ray actor does); the client job adds what a Flower client does around the
loop (build the model, load the global state, look up its data, copy the result out).

    python experiments/bench_client.py -c dataset=fashion-mnist --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from clients.local_training import benign_settings, run_local_job
from fl_backdoor.cli import add_config_arguments, config_from_cli, run_cli
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.models import build_model
from fl_backdoor.training import pick_device, to_device


def bare_epochs(cfg: ExperimentConfig, x: torch.Tensor, y: torch.Tensor, state: dict[str, torch.Tensor]) -> float:
    """Seconds of a hand-written SGD loop over index slices of (x, y)."""
    settings = benign_settings(cfg)
    started = time.perf_counter()
    model = to_device(build_model(cfg), x.device)  # the client's layout (channels-last)
    model.load_state_dict(state)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    for _ in range(settings.epochs):
        order = torch.randperm(x.shape[0]).to(x.device)
        for start in range(0, x.shape[0], settings.batch_size):
            idx = order[start:start + settings.batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()  # kernels run asynchronously: wait for the last step before stopping the clock
    return time.perf_counter() - started


def main() -> None:
    """Time both, alternating, and print samples/s and the client's overhead."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", type=int, default=1, help="client id whose data is used (a benign one)")
    parser.add_argument("--repeats", type=int, default=3)
    add_config_arguments(parser)
    args = parser.parse_args()
    cfg = config_from_cli(args, {"num-attackers": 0})
    torch.set_num_threads(1)
    x, y = client_data(cfg, args.client, pick_device(cfg.device))  # on the device the client job trains on
    state = build_model(cfg).state_dict()
    samples = x.shape[0] * cfg.local_epochs
    run_local_job(cfg, args.client, state, 1)  # warm-up: allocator, kernels
    bare, client = [], []
    for r in range(args.repeats):
        bare.append(bare_epochs(cfg, x, y, state))
        started = time.perf_counter()
        run_local_job(cfg, args.client, state, r + 2)
        client.append(time.perf_counter() - started)
    b, c = min(bare), min(client)
    print(f"model {cfg.model_name} on {x.device.type}, {x.shape[0]} samples x {cfg.local_epochs} epoch(s), "
          f"batch {cfg.batch_size}, 1 thread")
    print(f"bare PyTorch loop : {samples / b:8.0f} samples/s  (best of {args.repeats}: {b:.3f}s)")
    print(f"client local job  : {samples / c:8.0f} samples/s  (best of {args.repeats}: {c:.3f}s)")
    print(f"client overhead   : {100.0 * (c - b) / b:+.1f}%")


if __name__ == "__main__":
    run_cli(main)
