"""The server's whole run: federated training under attack, then the configured defense.

``run_pipeline`` is what the ServerApp executes, under ``flwr run``, the Python API
and a Ray cluster alike.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid

from fl_backdoor.allocator import keep_freed_memory
from fl_backdoor.config import ExperimentConfig, UserError
from fl_backdoor.datasets import resolve_data_dir
from fl_backdoor.evaluation import Evaluator
from fl_backdoor.federation_data import check_attackers_data, test_set
from fl_backdoor.masks import NeuronMask
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import (
    CheckpointError,
    RunDirectory,
    atomic_write_text,
    load_checkpoint,
    read_csv,
    write_csv,
    write_json,
)
from fl_backdoor.tables import markdown_table, result_row
from fl_backdoor.training import pick_device, to_device
from server_strategies.cleansing import Cleansing
from server_strategies.federation import DROP_KINDS, Federation
from server_strategies.nodes import map_clients_to_nodes
from server_strategies.phases import defense_steps
from server_strategies.server_run import GlobalModel, RunState, ServerRun


def initial_model(cfg: ExperimentConfig) -> GlobalModel:
    """A freshly seeded model, or the model of init-checkpoint (its round and mask included)."""
    torch.manual_seed(cfg.seed)
    gm = GlobalModel(build_model(cfg))
    if cfg.init_checkpoint:
        restore(gm, Path(cfg.init_checkpoint), "init-checkpoint", cfg.model_name)
    return gm


def resumed_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """With resume, the run's saved config (so the continuation equals the original), else cfg."""
    if not cfg.resume:
        return cfg
    saved = Path(cfg.output_dir).expanduser().resolve() / cfg.run_name / "config.json"
    if not saved.exists():
        raise CheckpointError(f"resume: no run to continue in {saved.parent}")
    flat = json.loads(saved.read_text())
    flat.update({"resume": True, "output-dir": cfg.output_dir, "run-name": cfg.run_name})
    if (saved.parent / "checkpoints" / "latest.pt").is_file():
        flat["init-checkpoint"] = ""  # it continues from its own latest checkpoint, not the one it started from
    return ExperimentConfig.from_flat(flat)


def prepare_run(grid: Grid, cfg: ExperimentConfig) -> ServerRun:
    """Resolve paths, check data and checkpoint before anything trains, and set up (or reopen) the run."""
    cfg = resumed_config(cfg)
    cfg = cfg.replace(data_dir=str(resolve_data_dir(cfg.data_dir)))
    device = pick_device(cfg.device)
    evaluator = Evaluator(cfg, test_set(cfg), device)  # loads and checks the data now
    check_attackers_data(cfg)  # computes the partitions
    gm = initial_model(cfg)
    run_dir = RunDirectory.create(cfg)
    try:
        warnings = cfg.warnings()
        for line in warnings:
            print(f"warning: {line}", flush=True)
        if warnings:
            atomic_write_text(run_dir.path / "warnings.txt", "".join(f"warning: {line}\n" for line in warnings))
        continuing = cfg.resume and run_dir.checkpoint("latest").is_file()
        state = RunState.load(run_dir) if continuing else RunState(gm.round, gm.round + cfg.num_rounds)
        if continuing:
            restore(gm, run_dir.checkpoint("latest"), "resume", cfg.model_name)
            print(f"resuming {run_dir.path} after round {gm.round} (steps done: {', '.join(state.done) or 'none'})",
                  flush=True)
        elif cfg.resume:
            print(f"resuming {run_dir.path}: it stopped before its first checkpoint, so it starts over", flush=True)
        to_device(gm.model, device)
        print(f"run directory: {run_dir.path}", flush=True)
        client_nodes = map_clients_to_nodes(grid, cfg.num_clients)
        run = ServerRun(cfg, grid, run_dir, evaluator, gm, Federation(cfg, grid, client_nodes), state)
        if continuing:
            # rows are written before the round's checkpoint: drop those of a round the checkpoint missed
            run.rows = [r for r in read_csv(run_dir.metrics_csv) if int(r["round"]) <= gm.round]
            run.federation.dropped = [d for d in read_csv(run_dir.path / "dropped_replies.csv")
                                      if int(d["round"]) <= gm.round]
    except BaseException:
        run_dir.release()
        raise
    return run


def restore(gm: GlobalModel, path: Path, key: str, model_name: str) -> None:
    """Load a checkpoint (weights, round, mask, aggregator memory) into the global model; ``key`` names
    the setting that pointed at it in the error of a checkpoint that does not fit the model."""
    data = load_checkpoint(path)
    try:
        gm.model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{key}: {path} does not fit model {model_name}: "
                              f"{str(exc).splitlines()[0]}") from None
    gm.round = int(data.get("round", 0))
    gm.set_mask(NeuronMask.from_dict(data["mask"]) if data.get("mask") else None)
    gm.aggregator_memory = dict(data.get("aggregator_memory") or {})


def run_pipeline(grid: Grid, cfg: ExperimentConfig) -> Path:
    """Train under attack for num-rounds rounds, then run the defense; returns the run directory.

    Every round and step is checkpointed; with resume the run continues after the
    last one completed.
    """
    keep_freed_memory()
    if hasattr(grid, "pull_interval"):  # the simulation's in-memory grid polls for replies every 0.1 s by default
        grid.pull_interval = 0.01
    try:
        run = prepare_run(grid, cfg)
        try:
            return train_and_defend(run)
        finally:
            run.run_dir.release()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # every file is written atomically, so the last complete checkpoint and metrics are intact
        raise UserError(f"no space left on the device of output-dir ({Path(cfg.output_dir).resolve()}): "
                        f"the run stopped after its last complete checkpoint; free space, then rerun "
                        f"with resume=true to continue") from None


def train_and_defend(run: ServerRun) -> Path:
    """The rounds and defense steps of a prepared run not done yet; returns the run directory."""
    cfg, state = run.cfg, run.state
    if "train" not in state.done:
        if state.end_round > run.global_model.round:
            print(f"training rounds {run.global_model.round + 1}..{state.end_round} on {cfg.num_clients} clients "
                  f"(attackers {list(cfg.attackers)}, attack rounds '{cfg.attack_rounds}')", flush=True)
        if not run.rows:  # a fresh run (or one that stopped before its first checkpoint)
            run.record_round({"phase": "init", "round": state.start_round, **run.evaluate(), "clients": 0,
                              "attacking": 0, "replies": 0, "seconds": 0.0})
            run.checkpoint("latest", phase="init")  # a run killed in its first round can resume too
            state.save(run.run_dir)
        started = time.perf_counter()
        run.training_rounds(range(run.global_model.round + 1, state.end_round + 1))
        state.phase_seconds["train"] = state.phase_seconds.get("train", 0.0) + round(time.perf_counter() - started, 3)
        state.results["training"] = run.evaluate()
        run.checkpoint("trained", phase="train")
        run.complete("train")
        run.plot_rounds()
    if defense_steps(cfg.defense):
        Cleansing(run).run_defense()
        run.plot_rounds()
    finish_run(run, state.results)
    return run.run_dir.path


def finish_run(run: ServerRun, results: dict[str, dict[str, Any]]) -> None:
    """Write results.json, the paper-layout results.csv/results.md, and print the table."""
    cfg = run.cfg
    row = result_row(cfg, results, run.phase_seconds)
    dropped = run.federation.dropped
    counts = {kind: sum(1 for d in dropped if d["kind"] == kind) for kind in DROP_KINDS}
    write_json(run.run_dir.path / "results.json", {"phases": results, "phase_seconds": run.phase_seconds,
                                                   "final_round": run.global_model.round, "row": row,
                                                   "dropped_replies": counts})
    if dropped:
        write_csv(run.run_dir.path / "dropped_replies.csv", dropped)  # drops of the cleansing queries
    write_csv(run.run_dir.path / "results.csv", [row])
    table = markdown_table([row])
    atomic_write_text(run.run_dir.path / "results.md", table)
    print(table, end="", flush=True)
    print(f"results in {run.run_dir.path}", flush=True)
