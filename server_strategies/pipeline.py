"""The server's whole run: federated training under attack, then the configured defense.

``run_pipeline`` is what the ServerApp executes, under ``flwr run``, the Python API
and a Ray cluster alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from defenses.masks import NeuronMask, install_mask
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.datasets import resolve_data_dir
from fl_backdoor.evaluation import Evaluator
from fl_backdoor.federation_data import client_partitions, test_set
from fl_backdoor.models import build_model
from fl_backdoor.plots import plot_curves
from fl_backdoor.run_dir import CheckpointError, RunDirectory, load_checkpoint, read_csv, save_checkpoint, write_csv, write_json
from fl_backdoor.training import pick_device
from server_strategies.fedavg import BackdoorFedAvg
from server_strategies.nodes import map_clients_to_nodes


def percent(value: float) -> str:
    """0.8412 -> '84.12%'."""
    return f"{100.0 * value:6.2f}%"


@dataclass
class GlobalModel:
    """The server's copy of the global model, its mask and the round it has reached."""

    model: torch.nn.Module
    round: int = 0
    mask: NeuronMask | None = None

    def arrays(self) -> ArrayRecord:
        """The state dict as a Flower ArrayRecord."""
        return ArrayRecord(self.model.state_dict())

    def load(self, arrays: ArrayRecord) -> None:
        """Replace the weights with an aggregated ArrayRecord."""
        self.model.load_state_dict(arrays.to_torch_state_dict())

    def set_mask(self, mask: NeuronMask | None) -> None:
        """Install a pruning mask (None removes it)."""
        self.mask = mask
        install_mask(self.model, mask)


@dataclass
class ServerRun:
    """Everything one server run holds: config, outputs, model, evaluator and the strategy."""

    cfg: ExperimentConfig
    grid: Grid
    run_dir: RunDirectory
    evaluator: Evaluator
    global_model: GlobalModel
    strategy: BackdoorFedAvg
    rows: list[dict[str, Any]] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def evaluate(self) -> dict[str, float]:
        """TA, AA (and DBA piece AAs) of the current global model."""
        return self.evaluator(self.global_model.model)

    def checkpoint(self, name: str, **meta: Any) -> None:
        """Save the global model, its round, mask and config under checkpoints/<name>.pt."""
        gm = self.global_model
        save_checkpoint(self.run_dir.checkpoint(name), gm.model.state_dict(), round=gm.round,
                        mask=gm.mask.to_dict() if gm.mask else None, config=self.cfg.to_flat(), **meta)

    def record_round(self, row: dict[str, Any]) -> None:
        """Append a per-round metrics row, rewrite metrics.csv and print the progress line."""
        self.rows.append(row)
        write_csv(self.run_dir.metrics_csv, self.rows)
        parts = [f"[{row['phase']}] round {row['round']:>4}"]
        if "ta" in row:
            parts.append(f"TA {percent(row['ta'])}  AA {percent(row['aa'])}")
            parts += [f"AA{k[-1]} {percent(v)}" for k, v in row.items() if k.startswith("aa_piece")]
        parts.append(f"loss {row.get('train_loss', float('nan')):.3f}")
        parts.append(f"clients {row['clients']} ({row['attacking']} attacking)")
        parts.append(f"{row['seconds']:.1f}s")
        print("  ".join(parts), flush=True)

    def federated_rounds(self, phase: str, rounds: range) -> None:
        """Run FedAvg rounds of a phase ('train' or 'finetune'), evaluating and checkpointing each."""
        cfg, gm, strategy = self.cfg, self.global_model, self.strategy
        strategy.phase, strategy.mask = phase, gm.mask
        last = rounds[-1] if len(rounds) else 0
        for server_round in rounds:
            started = time.perf_counter()
            messages = strategy.configure_train(server_round, gm.arrays(), ConfigRecord(), self.grid)
            replies = list(self.grid.send_and_receive(messages, timeout=cfg.round_timeout))
            arrays, metrics = strategy.aggregate_train(server_round, replies)
            if arrays is None:
                print(f"[{phase}] round {server_round}: only {metrics['replies']} valid replies "
                      f"(min-replies {cfg.min_replies}); round skipped, global model kept", flush=True)
            else:
                gm.load(arrays)
            gm.round = server_round
            row: dict[str, Any] = {"phase": phase, "round": server_round}
            if server_round % cfg.eval_every == 0 or server_round == last:
                row.update(self.evaluate())
            row["train_loss"] = float(metrics.get("train-loss", float("nan")))
            row["clients"] = len(strategy.sampled)
            row["attacking"] = sum(1 for c in strategy.sampled if c in cfg.attackers and
                                   (phase == "finetune" or cfg.attacks_in_round(server_round)))
            row["replies"] = int(metrics["replies"])
            row["seconds"] = round(time.perf_counter() - started, 3)
            self.record_round(row)
            self.checkpoint("latest", phase=phase)

    def plot_rounds(self) -> None:
        """metrics.png: TA and AA per round (all phases)."""
        rows = [r for r in self.rows if r.get("ta") not in (None, "")]
        if not rows:
            return
        curves = {"TA": [float(r["ta"]) for r in rows], "AA": [float(r["aa"]) for r in rows]}
        for k in sorted(k for k in rows[-1] if k.startswith("aa_piece")):
            curves[f"AA piece {k[-1]}"] = [float(r[k]) for r in rows]
        plot_curves(self.run_dir.path / "metrics.png", [int(r["round"]) for r in rows], curves,
                    xlabel="round", title=f"{self.cfg.dataset}: TA and AA per round")


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
    run.federated_rounds("train", range(start + 1, start + cfg.num_rounds + 1))
    run.phase_seconds["train"] = round(time.perf_counter() - started, 3)
    run.checkpoint("trained", phase="train")
    run.plot_rounds()
    final = run.evaluate()
    write_json(run.run_dir.path / "results.json",
               {"training": final, "phase_seconds": run.phase_seconds, "final_round": gm.round})
    print(f"done: TA {percent(final['ta'])}  AA {percent(final['aa'])}  -> {run.run_dir.path}", flush=True)
    return run.run_dir.path
