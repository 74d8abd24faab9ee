#!/usr/bin/env python3
"""Time N federated rounds three ways on this machine, side by side, and print the ratios.

1. Flower's simulation engine with this project's ClientApp and ONE worker (one Ray actor,
   given every CPU);
2. a bare PyTorch loop doing the same local training of every client sequentially (the
   client jobs of clients.local_training, averaged and evaluated in plain torch): the
   compute floor;
3. the same Flower run with one worker per CPU.

Every process trains with one torch thread.  After every round the resident memory (RSS)
of each Flower worker (the ``ray::ClientAppActor`` processes of this run) is sampled, to
show that it does not grow with the number of rounds.

    python experiments/bench_simulation.py                       # the main setting on 20% of the data, 5 rounds
    python experiments/bench_simulation.py --rounds 10 -c dataset=mnist -c data-fraction=0.5

Goals: Flower/bare at most 1.25 with one worker; more than 1.6x speed-up with 2 workers on 2 CPUs.

Run it on an otherwise idle machine.  Ray starts its workers at nice 15, so any other
busy process takes CPU from the Flower workers but hardly from the bare loop (normal
priority), and the ratio then measures the machine's load, not Flower.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import torch

from clients.local_training import run_local_job
from fl_backdoor.cli import add_config_arguments, config_from_cli, run_cli
from fl_backdoor.config import ExperimentConfig, UserError
from fl_backdoor.evaluation import Evaluator
from fl_backdoor.federation_data import client_data, test_set
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import package_versions, read_csv, write_json
from server_strategies.simulation import run_simulation

BENCH = {"data-fraction": 0.2, "test-subset": 1000, "defense": "train-only", "curve-points": 0}


# --- the bare loop ------------------------------------------------------------------------------------
def bare_rounds(cfg: ExperimentConfig) -> list[float]:
    """Seconds of each round of FedAvg done in this process: every client's job in turn, then the
    paper's average G + (mean(L) - G) and the evaluation the server does after each round."""
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    evaluate = Evaluator(cfg, test_set(cfg), device)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seconds = []
    for server_round in range(1, cfg.num_rounds + 1):
        started = time.perf_counter()
        updates = [run_local_job(cfg, client, state, server_round).state for client in range(cfg.num_clients)]
        new = {}
        for name, g in state.items():
            mean = torch.stack([u[name].double() for u in updates]).mean(0)
            new[name] = mean.to(g.dtype) if g.is_floating_point() else mean.round().to(g.dtype)
        state = new
        model.load_state_dict(state)
        evaluate(model)
        seconds.append(time.perf_counter() - started)
    return seconds


# --- worker memory ------------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def worker_rss() -> dict[int, float]:
    """RSS in MiB of every Flower client actor started by this process (its Ray's workers)."""
    tree, found, todo = _children(), {}, [os.getpid()]
    while todo:
        for pid in tree.get(todo.pop(), []):
            todo.append(pid)
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ClientAppActor"):
                    status = Path(f"/proc/{pid}/status").read_text()
                    kib = next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]
                    found[pid] = int(kib) / 1024
            except (OSError, StopIteration):
                continue
    return found


class MemoryWatch(threading.Thread):
    """Samples worker RSS each time the run's metrics.csv gains a round."""

    def __init__(self, metrics: Path) -> None:
        super().__init__(daemon=True)
        self.metrics, self.stop = metrics, threading.Event()
        self.samples: dict[int, dict[int, float]] = {}  # round -> worker pid -> RSS in MiB

    def run(self) -> None:
        """Poll until stopped."""
        while not self.stop.wait(0.2):
            rows = [r for r in read_csv(self.metrics) if r["phase"] == "train"] if self.metrics.exists() else []
            if rows and int(rows[-1]["round"]) not in self.samples:
                self.samples[int(rows[-1]["round"])] = worker_rss()


def flower_rounds(cfg: ExperimentConfig, cpus: int) -> tuple[float, list[float], dict[int, dict[int, float]]]:
    """(total seconds, seconds of each round, worker RSS after each round) of one simulation."""
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)  # Flower joins it, and shuts it down
    watch = MemoryWatch(Path(cfg.output_dir) / cfg.run_name / "metrics.csv")
    watch.start()
    started = time.perf_counter()
    run_dir = run_simulation(cfg)
    total = time.perf_counter() - started
    watch.stop.set()
    watch.join()
    rounds = [float(r["seconds"]) for r in read_csv(run_dir / "metrics.csv") if r["phase"] == "train"]
    return total, rounds, watch.samples


def steady(seconds: list[float]) -> float:
    """Mean seconds per round after the first (which also loads data and warms up workers)."""
    rest = seconds[1:] or seconds
    return sum(rest) / len(rest)


def busy_cpus(seconds: float = 1.0) -> float | None:
    """CPUs' worth of work other processes did during the last ``seconds`` (None without /proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all jiffies, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    share = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return share * (os.cpu_count() or 1)


def load_warning(busy: float | None, threshold: float = 0.3) -> str:
    """A warning line when other processes kept more than ``threshold`` CPUs busy ('' otherwise)."""
    if busy is None or busy <= threshold:
        return ""
    return (f"WARNING: other processes kept {busy:.1f} CPUs busy just before the run. Ray runs the Flower "
            "workers at nice 15, so other work slows them far more than the bare loop; the ratios will be off.")


def main() -> None:
    """Run the three variants and print times, ratios and worker memory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds of each variant")
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPUs of the Ray instance (default: this machine's)")
    parser.add_argument("--out", default="", help="directory of the runs and bench.json; default results/bench-<time>")
    add_config_arguments(parser)
    args = parser.parse_args()
    if args.rounds < 2 or args.cpus < 1:
        raise UserError(f"--rounds must be >= 2 and --cpus >= 1, got {args.rounds} and {args.cpus}")
    out = Path(args.out or f"results/bench-{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    cfg = config_from_cli(args, {**BENCH, "num-rounds": args.rounds, "output-dir": str(out)})
    torch.set_num_threads(1)
    busy_at_start = busy_cpus()
    if warning := load_warning(busy_at_start):
        print(warning, flush=True)
    sizes = [client_data(cfg, c, torch.device("cpu"))[1].shape[0] for c in range(cfg.num_clients)]
    print(f"{cfg.dataset} {cfg.model_name}: {cfg.num_clients} clients, {sum(sizes)} samples, attackers "
          f"{list(cfg.attackers)} ({cfg.poison_epochs} poison epochs); {args.rounds} rounds; {args.cpus} CPUs",
          flush=True)

    one = flower_rounds(cfg.replace(client_cpus=float(args.cpus), run_name="flower-1-worker"), args.cpus)
    print(f"  Flower, 1 worker  : {one[0]:.1f}s", flush=True)
    started = time.perf_counter()
    bare = bare_rounds(cfg)
    bare_total = time.perf_counter() - started
    print(f"  bare PyTorch loop : {bare_total:.1f}s", flush=True)
    many = flower_rounds(cfg.replace(client_cpus=1.0, run_name=f"flower-{args.cpus}-workers"), args.cpus)
    print(f"  Flower, {args.cpus} workers : {many[0]:.1f}s", flush=True)

    rows = [("bare PyTorch loop, 1 thread", bare_total, bare), ("Flower, 1 worker", one[0], one[1]),
            (f"Flower, {args.cpus} workers", many[0], many[1])]
    print(f"\n{'variant':30s} {'total s':>8s} {'rounds s':>9s} {'round 1 s':>9s} {'s/round 2..N':>13s}")
    for name, total, seconds in rows:
        print(f"{name:30s} {total:8.1f} {sum(seconds):9.1f} {seconds[0]:9.2f} {steady(seconds):13.2f}")
    overhead, speedup = steady(one[1]) / steady(bare), steady(one[1]) / steady(many[1])
    print(f"\nFlower/bare, 1 worker (s/round 2..N): {overhead:.2f}  (goal <= 1.25; all rounds: "
          f"{sum(one[1]) / sum(bare):.2f}, with start-up: {one[0] / bare_total:.2f})")
    print(f"speed-up, {args.cpus} workers vs 1 (s/round 2..N): {speedup:.2f}x  (goal > 1.6 with 2 workers on 2 CPUs; "
          f"all rounds: {sum(one[1]) / sum(many[1]):.2f}x)")
    print("\nworker RSS (MiB) after each round:")
    for name, samples in (("1 worker", one[2]), (f"{args.cpus} workers", many[2])):
        for r in sorted(samples):
            print(f"  {name:10s} round {r:3d}: " + "  ".join(f"{v:7.1f}" for v in sorted(samples[r].values())))
        if len(samples) >= 2:
            first, last = samples[min(samples)], samples[max(samples)]
            common = set(first) & set(last)
            growth = max((last[p] - first[p] for p in common), default=float("nan"))
            print(f"  {name:10s} largest growth of a worker from round {min(samples)} to {max(samples)}: "
                  f"{growth:+.1f} MiB")
    write_json(out / "bench.json", {"config": cfg.to_flat(), "cpus": args.cpus, "busy_cpus_at_start": busy_at_start,
                                    "versions": package_versions(),
                                    "seconds": {name: {"total": t, "rounds": s} for name, t, s in rows},
                                    "flower_over_bare": overhead, "speedup": speedup,
                                    "worker_rss_mib": {"1": one[2], str(args.cpus): many[2]}})
    print(f"\nruns and bench.json in {out}")


if __name__ == "__main__":
    run_cli(main)
