"""What a defense phase asks of the clients beyond plain training: its queries and its kinds of training round.

A federated phase declares, in its own module, everything a client needs for it:

* a **query**: a job on the client's local data whose reply is a dict of numbers, registered
  under a name (``@QUERIES.register("my-query")``), with the reply check the server applies
  beside it (server_strategies/reply_checks.py has the pieces);
* a **training variant**: how honest clients train in the phase's FedAvg rounds instead of
  plain SGD (``@TRAINING.register("my-training")``; I-BAU's unlearning, FT-SAM's optimiser).

The server sends a query as the Flower message ``protocol.PHASE_QUERY`` with the query's name
in its config, and a variant's name in a train message's config; the ClientApp looks both up
here, so it never names a defense.  Every reply passes the client's behaviours
(``Behaviour.reply``), so an attacker can lie in any query.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord
from torch import nn

from clients.behaviours import conduct_of
from fl_backdoor import protocol
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.masks import NeuronMask
from fl_backdoor.registry import Registry
from fl_backdoor.training import BatchTransform, SGDSettings, TrainStats


@dataclass(frozen=True)
class Request:
    """What every train, evaluate and query message carries."""

    cfg: ExperimentConfig
    config: ConfigRecord
    client_id: int
    state: dict[str, torch.Tensor]
    mask: NeuronMask | None

    @property
    def server_round(self) -> int:
        """The round the message belongs to."""
        return protocol.number(self.config, "server-round", int)


QueryJob = Callable[[Request], dict[str, Any]]
QUERIES: Registry[QueryJob] = Registry("client query", None)


def answer(req: Request) -> dict[str, Any]:
    """Run the query a message names and pass its reply through the client's behaviours."""
    name = str(req.config[protocol.QUERY_NAME])
    metrics = QUERIES[name](req)
    return conduct_of(req.cfg, req.client_id).reply(name, metrics)


class TrainingVariant:
    """How honest clients train in a phase's rounds; the defaults are plain local SGD.  ``entries`` are the train
    message's config entries (what the phase sent with the model, e.g. a reversed trigger)."""

    def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
        self.entries: Mapping[str, Any] = entries or {}

    def transform(self, cfg: ExperimentConfig, x: torch.Tensor) -> BatchTransform | None:
        """A change applied to every training batch of the job (an attacker's behaviours may still replace it)."""
        return None

    def settings(self, cfg: ExperimentConfig, settings: SGDSettings) -> SGDSettings:
        """The optimiser of the job (an attacker's behaviours may still replace it)."""
        return settings

    def honest_training(self, cfg: ExperimentConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        generator: torch.Generator) -> TrainStats | None:
        """Train a client that does not poison in this job its own way, or None to train with SGD."""
        return None


TRAINING: Registry[type[TrainingVariant]] = Registry("training variant", None)
