"""The server's state during a run: the global model, its mask, the federation and the outputs."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MessageType
from flwr.serverapp import Grid

from fl_backdoor.attacks import is_attacking
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.evaluation import Evaluator
from fl_backdoor.masks import NeuronMask, install_mask
from fl_backdoor.plots import plot_curves
from fl_backdoor.run_dir import RunDirectory, save_checkpoint, write_csv, write_json
from server_strategies.aggregators import AGGREGATORS, Aggregate, detection_counts, round_context
from server_strategies.byzantine import byzantine_replies
from server_strategies.federation import Federation
from server_strategies.reply_checks import model_checker


def percent(value: float) -> str:
    """0.8412 -> '84.12%'."""
    return f"{100.0 * value:6.2f}%"


@dataclass
class GlobalModel:
    """The server's copy of the global model, its mask and the round it has reached."""

    model: torch.nn.Module
    round: int = 0
    mask: NeuronMask | None = None
    aggregator_memory: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. FoolsGold's client histories

    def arrays(self) -> ArrayRecord:
        """The state dict as a Flower ArrayRecord."""
        return ArrayRecord({k: v.contiguous() for k, v in self.model.state_dict().items()})

    def load(self, arrays: ArrayRecord) -> None:
        """Replace the weights with an aggregated ArrayRecord."""
        self.model.load_state_dict(arrays.to_torch_state_dict())

    def set_mask(self, mask: NeuronMask | None) -> None:
        """Install a pruning mask (None removes it)."""
        self.mask = mask
        install_mask(self.model, mask)


@dataclass
class RunState:
    """Progress of a run, saved after every round and step so that ``resume`` continues it.

    ``checkpoints/latest.pt`` always holds the model after the last completed round or
    step; this state says which steps are done and what they found.
    """

    start_round: int = 0
    end_round: int = 0
    done: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # progress of an unfinished round-based step: fine-tuning's patience, I-BAU's first round
    step_progress: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: RunDirectory) -> None:
        """Write state.json atomically."""
        write_json(run_dir.path / "state.json", asdict(self))

    @classmethod
    def load(cls, run_dir: RunDirectory) -> RunState:
        """Read state.json (a fresh state when absent)."""
        path = run_dir.path / "state.json"
        if not path.exists():
            return cls()
        saved = json.loads(path.read_text())
        if "finetune" in saved:  # the field's name in runs saved before it held I-BAU's progress too
            saved["step_progress"] = saved.pop("finetune")
        return cls(**saved)


@dataclass
class ServerRun:
    """Everything one server run holds: config, outputs, model, evaluator, federation and progress."""

    cfg: ExperimentConfig
    grid: Grid
    run_dir: RunDirectory
    evaluator: Evaluator
    global_model: GlobalModel
    federation: Federation
    state: RunState
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def phase_seconds(self) -> dict[str, float]:
        """Seconds spent per phase (train, prune, finetune, aw)."""
        return self.state.phase_seconds

    def complete(self, step: str) -> None:
        """Mark a step done: save the model as latest and the state."""
        self.state.done.append(step)
        self.checkpoint("latest", phase=step)
        self.state.save(self.run_dir)

    def evaluate(self) -> dict[str, float]:
        """TA, AA (and DBA piece AAs) of the current global model."""
        return self.evaluator(self.global_model.model)

    def checkpoint(self, name: str, **meta: Any) -> None:
        """Save the global model, its round, mask and config under checkpoints/<name>.pt."""
        gm = self.global_model
        save_checkpoint(self.run_dir.checkpoint(name), gm.model.state_dict(), round=gm.round,
                        mask=gm.mask.to_dict() if gm.mask else None, config=self.cfg.to_flat(),
                        aggregator_memory=gm.aggregator_memory, **meta)

    def record_round(self, row: dict[str, Any]) -> None:
        """Append a per-round metrics row, rewrite metrics.csv and print the progress line."""
        self.rows.append(row)
        write_csv(self.run_dir.metrics_csv, self.rows)
        if self.federation.dropped:
            write_csv(self.run_dir.path / "dropped_replies.csv", self.federation.dropped)
        parts = [f"[{row['phase']}] round {row['round']:>4}"]
        if "ta" in row:
            parts.append(f"TA {percent(row['ta'])}  AA {percent(row['aa'])}")
            parts += [f"AA{k[-1]} {percent(v)}" for k, v in row.items() if k.startswith("aa_piece")]
        parts.append(f"loss {row.get('train_loss', float('nan')):.3f}")
        parts.append(f"clients {row['clients']} ({row['attacking']} attacking)")
        parts.append(f"{row['seconds']:.1f}s")
        print("  ".join(parts), flush=True)

    def federated_round(self, phase: str, server_round: int, evaluate: bool = True,
                        entries: dict[str, Any] | None = None) -> dict[str, Any]:
        """One FedAvg round of a phase ('train' or 'finetune'): aggregate, evaluate, record, checkpoint.

        ``entries`` go to every client with the model (e.g. fine-tuning's optimiser)."""
        cfg, gm, federation = self.cfg, self.global_model, self.federation
        started = time.perf_counter()
        clients = federation.sample(server_round, phase)
        arrays = gm.arrays()
        valid = federation.ask(clients, MessageType.TRAIN, arrays, entries or {}, server_round, phase, gm.mask,
                               model_checker(arrays))
        valid = byzantine_replies(cfg, arrays, valid, [is_attacking(cfg, c, server_round, phase) for c, _ in valid],
                                  lambda client, reason: federation.refuse(phase, server_round, client, reason))
        detection: dict[str, Any] = {}  # the aggregation's seconds, and whom it flagged
        if len(valid) < cfg.min_replies:
            print(f"[{phase}] round {server_round}: only {len(valid)} valid replies "
                  f"(min-replies {cfg.min_replies}); round skipped, global model kept", flush=True)
        else:
            context = round_context(cfg.aggregation, server_round, [c for c, _ in valid], gm.aggregator_memory)
            local = [local for _, (local, _) in valid]
            aggregating = time.perf_counter()
            result = AGGREGATORS[cfg.aggregation](arrays, local, cfg, **context)
            detection["aggregate_seconds"] = round(time.perf_counter() - aggregating, 4)
            if isinstance(result, Aggregate):
                detection.update(detection_counts([c for c, _ in valid], result.factors,
                                                  lambda c: is_attacking(cfg, c, server_round, phase)))
                detection.update(result.metrics)
                result = result.arrays
            gm.load(result)
        gm.round = server_round
        row: dict[str, Any] = {"phase": phase, "round": server_round}
        if evaluate:
            row.update(self.evaluate())
        row["train_loss"] = (float(np.mean([loss for _, (_, loss) in valid])) if len(valid) >= cfg.min_replies
                             else float("nan"))
        row["clients"] = len(clients)
        row["attacking"] = sum(1 for c in clients if is_attacking(cfg, c, server_round, phase))
        row["replies"] = len(valid)
        row.update(federation.drop_counts(server_round, phase))
        row.update(detection)
        row["seconds"] = round(time.perf_counter() - started, 3)
        self.record_round(row)
        self.checkpoint("latest", phase=phase)
        self.state.save(self.run_dir)
        return row

    def training_rounds(self, rounds: range) -> None:
        """The federated training phase under attack."""
        last = rounds[-1] if len(rounds) else 0
        for server_round in rounds:
            self.federated_round("train", server_round,
                                 evaluate=server_round % self.cfg.eval_every == 0 or server_round == last)

    def plot_rounds(self) -> None:
        """metrics.png: TA and AA per round (all phases)."""
        rows = [r for r in self.rows if r.get("ta") not in (None, "")]
        if not rows:
            return
        rounds = [int(r["round"]) for r in rows]
        curves = {"TA": (rounds, [r["ta"] for r in rows]), "AA": (rounds, [r["aa"] for r in rows])}
        for k in sorted(k for k in rows[-1] if k.startswith("aa_piece")):
            curves[f"AA piece {k[-1]}"] = (rounds, [r[k] for r in rows])
        plot_curves(self.run_dir.path / "metrics.png", curves, xlabel="round",
                    title=f"{self.cfg.dataset}: TA and AA per round")
