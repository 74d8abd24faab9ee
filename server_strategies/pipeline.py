"""The server's whole run: federated training under attack, then the configured defense.

``run_pipeline`` is what the ServerApp executes, under ``flwr run``, the Python API
and a Ray cluster alike.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid

from defenses.masks import NeuronMask
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.datasets import resolve_data_dir
from fl_backdoor.evaluation import Evaluator
from fl_backdoor.federation_data import client_partitions, test_set
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import (CheckpointError, RunDirectory, atomic_write_text, load_checkpoint, read_csv,
                                 write_csv, write_json)
from fl_backdoor.tables import markdown_table, result_row
from fl_backdoor.training import pick_device
from server_strategies.cleansing import Cleansing
from server_strategies.fedavg import BackdoorFedAvg
from server_strategies.nodes import map_clients_to_nodes
from server_strategies.server_run import GlobalModel, ServerRun, percent


def initial_model(cfg: ExperimentConfig) -> GlobalModel:
    """A freshly seeded model, or the model of init-checkpoint (its round and mask included)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    gm = GlobalModel(model)
    if cfg.init_checkpoint:
        data = load_checkpoint(cfg.init_checkpoint)
        try:
            model.load_state_dict(data["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"init-checkpoint: {cfg.init_checkpoint} does not fit model "
                                  f"{cfg.model_name}: {str(exc).splitlines()[0]}") from None
        gm.round = int(data.get("round", 0))
        if data.get("mask"):
            gm.set_mask(NeuronMask.from_dict(data["mask"]))
    return gm


def prepare_run(grid: Grid, cfg: ExperimentConfig) -> ServerRun:
    """Resolve paths, check data and checkpoint before anything trains, and set up the run."""
    cfg = cfg.replace(data_dir=str(resolve_data_dir(cfg.data_dir)))
    device = pick_device(cfg.device)
    evaluator = Evaluator(cfg, test_set(cfg), device)  # loads and checks the data now
    client_partitions(cfg)
    gm = initial_model(cfg)
    gm.model.to(device)
    run_dir = RunDirectory.create(cfg)
    print(f"run directory: {run_dir.path}", flush=True)
    client_nodes = map_clients_to_nodes(grid, cfg.num_clients)
    run = ServerRun(cfg, grid, run_dir, evaluator, gm, BackdoorFedAvg(cfg, client_nodes))
    run.rows = [dict(r) for r in read_csv(run_dir.metrics_csv)] if cfg.resume else []
    return run


def run_pipeline(grid: Grid, cfg: ExperimentConfig) -> Path:
    """Train under attack for num-rounds rounds, then run the defense; returns the run directory."""
    run = prepare_run(grid, cfg)
    gm = run.global_model
    start = gm.round
    print(f"training rounds {start + 1}..{start + cfg.num_rounds} on {cfg.num_clients} clients "
          f"(attackers {list(cfg.attackers)}, attack rounds '{cfg.attack_rounds}')", flush=True)
    if start == 0 or cfg.init_checkpoint:
        row = {"phase": "init", "round": start, **run.evaluate(), "clients": 0, "attacking": 0,
               "replies": 0, "seconds": 0.0}
        run.record_round(row)
    started = time.perf_counter()
    run.training_rounds(range(start + 1, start + cfg.num_rounds + 1))
    run.phase_seconds["train"] = round(time.perf_counter() - started, 3)
    run.checkpoint("trained", phase="train")
    run.plot_rounds()
    results = {"training": run.evaluate()}
    if cfg.defense != "train-only":
        results.update(Cleansing(run).run_mode())
        run.plot_rounds()
    finish_run(run, results)
    return run.run_dir.path


def finish_run(run: ServerRun, results: dict[str, dict[str, Any]]) -> None:
    """Write results.json, the paper-layout results.csv/results.md, and print the table."""
    cfg = run.cfg
    row = result_row(cfg, results, run.phase_seconds)
    write_json(run.run_dir.path / "results.json", {"phases": results, "phase_seconds": run.phase_seconds,
                                                   "final_round": run.global_model.round, "row": row})
    write_csv(run.run_dir.path / "results.csv", [row])
    table = markdown_table([row])
    atomic_write_text(run.run_dir.path / "results.md", table)
    print(table, end="", flush=True)
    print(f"results in {run.run_dir.path}", flush=True)
