"""How a client behaves, as classes with hooks, one file per behaviour, registered by name.

Every hook's default is the honest computation, so the benign client overrides
nothing.  A client's conduct is the chain of behaviours the config gives it:

* a benign client: ``benign``;
* an attacker: ``attacker`` (poisoning and model replacement in its attack rounds),
  then its adaptive attack (``adaptive-attack``, registered with ``role="adaptive"``),
  then its kind of invalid reply (``malformed-reply``, ``role="malformed"``).

Each hook receives what the previous behaviour in the chain produced and returns
its own version.  A new attack is one file::

    @BEHAVIOURS.register("my-attack", role="adaptive")
    class MyAttack(Behaviour):
        def submit(self, job, global_state, local): ...

and ``adaptive-attack = "my-attack"`` selects it.  A behaviour with settings of its own
declares them when it registers (``settings=``, fl_backdoor.settings), with the rules
that must hold when it is picked (``rules=``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.errors import ConfigError
from fl_backdoor.masks import NeuronMask
from fl_backdoor.registry import Registry, unknown_choice
from fl_backdoor.training import BatchTransform, SGDSettings

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Job:
    """One local training job: which client, which round and phase, and whether the client poisons in it.

    ``memory`` is the client's own store of tensors across its jobs (Flower keeps it in the
    node's ``Context.state``); a behaviour may read and change it.
    """

    cfg: ExperimentConfig
    client_id: int
    server_round: int
    phase: str
    attacking: bool
    memory: State = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingPlan:
    """What a training job trains on and how."""

    x: torch.Tensor
    y: torch.Tensor
    settings: SGDSettings
    transform: BatchTransform | None = None
    after_step: Callable[[nn.Module], None] | None = None

    def but(self, **changes: object) -> TrainingPlan:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


class Behaviour:
    """A client's conduct as hooks; every default is the honest computation."""

    def __init__(self, cfg: ExperimentConfig, client_id: int) -> None:
        self.cfg = cfg
        self.client_id = client_id

    def poisons(self, server_round: int, phase: str) -> bool:
        """Whether this behaviour poisons in a job (any behaviour of the chain poisoning makes it an attack job)."""
        return False

    def start(self, job: Job) -> None:
        """Called before a training job does anything."""

    def training(self, job: Job, plan: TrainingPlan, model: nn.Module, mask: NeuronMask | None) -> TrainingPlan:
        """The data, optimiser and per-step hook of a training job (``model`` may be prepared in place)."""
        return plan

    def submit(self, job: Job, global_state: State, local: State) -> State:
        """The model sent back after training."""
        return local

    def activations(self, model: nn.Module, layer: str, x: torch.Tensor, measured: np.ndarray) -> np.ndarray:
        """The mean activations a neuron report is built from."""
        return measured

    def neuron_report(self, method: str, report: list[int], rate: float) -> list[int]:
        """The RAP ranking or MVP votes sent back."""
        return report

    def local_accuracy(self, correct: int, total: int) -> tuple[int, int]:
        """(correct, total) sent back by an evaluate round."""
        return correct, total

    def candidate_accuracies(self, accuracies: list[float]) -> list[float]:
        """Accuracies of the pruning levels or Deltas sent back."""
        return accuracies

    def reply(self, query: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """The reply to a phase's client query (``query`` names it: clients/jobs.py), as sent back."""
        return metrics


def _named(registry: Registry[type[Behaviour]], role: str) -> tuple[str, ...]:
    return ("none", *(n for n in registry.names() if registry.meta(n).get("role") == role))


def picked_behaviours(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The behaviours a config gives its clients; ConfigError for an unknown kind of invalid reply or a
    '/'-list of kinds that does not match the attackers."""
    kinds = cfg.malformed_reply.split("/")
    choices = _named(BEHAVIOURS, "malformed")
    for kind in kinds:
        if kind not in choices:
            raise ConfigError(f"malformed-reply: {unknown_choice('kind', kind, choices)}")
    if len(kinds) not in (1, len(cfg.attackers)):
        raise ConfigError(f"malformed-reply: {len(kinds)} '/'-separated kinds for {len(cfg.attackers)} attackers")
    chosen = ["attacker"] if cfg.attackers else []
    return tuple(dict.fromkeys(n for n in (*chosen, cfg.adaptive_attack, *kinds) if n != "none"))


BEHAVIOURS: Registry[type[Behaviour]] = Registry(
    "client behaviour", __name__, picks=picked_behaviours,
    choices={"adaptive-attack": lambda r: _named(r, "adaptive"), "malformed-reply": lambda r: _named(r, "malformed")})


class Conduct:
    """The chain of behaviours one client follows; each hook (see Behaviour) folds over the chain in order."""

    def __init__(self, behaviours: list[Behaviour]) -> None:
        self.chain = behaviours

    def job(self, cfg: ExperimentConfig, client_id: int, server_round: int, phase: str,
            memory: State | None = None) -> Job:
        """A training job of this client (``memory``: its store across jobs; a fresh one when None)."""
        attacking = any(b.poisons(server_round, phase) for b in self.chain)
        return Job(cfg, client_id, server_round, phase, attacking, {} if memory is None else memory)

    def start(self, job: Job) -> None:
        for b in self.chain:
            b.start(job)

    def training(self, job: Job, plan: TrainingPlan, model: nn.Module, mask: NeuronMask | None) -> TrainingPlan:
        for b in self.chain:
            plan = b.training(job, plan, model, mask)
        return plan

    def submit(self, job: Job, global_state: State, local: State) -> State:
        for b in self.chain:
            local = b.submit(job, global_state, local)
        return local

    def activations(self, model: nn.Module, layer: str, x: torch.Tensor, measured: np.ndarray) -> np.ndarray:
        for b in self.chain:
            measured = b.activations(model, layer, x, measured)
        return measured

    def neuron_report(self, method: str, report: list[int], rate: float) -> list[int]:
        for b in self.chain:
            report = b.neuron_report(method, report, rate)
        return report

    def local_accuracy(self, correct: int, total: int) -> tuple[int, int]:
        for b in self.chain:
            correct, total = b.local_accuracy(correct, total)
        return correct, total

    def candidate_accuracies(self, accuracies: list[float]) -> list[float]:
        for b in self.chain:
            accuracies = b.candidate_accuracies(accuracies)
        return accuracies

    def reply(self, query: str, metrics: dict[str, Any]) -> dict[str, Any]:
        for b in self.chain:
            metrics = b.reply(query, metrics)
        return metrics


def conduct_of(cfg: ExperimentConfig, client_id: int) -> Conduct:
    """The behaviours the config gives a client (picked once per client and config)."""
    key = (cfg, client_id)
    if key not in _CONDUCTS:
        if client_id not in cfg.attackers:
            names = ["benign"]
        else:
            names = ["attacker"] + [n for n in (cfg.adaptive_attack, cfg.malformed_kind(client_id)) if n != "none"]
        _CONDUCTS[key] = Conduct([BEHAVIOURS[n](cfg, client_id) for n in names])
    return _CONDUCTS[key]


_CONDUCTS: dict[tuple[ExperimentConfig, int], Conduct] = {}
