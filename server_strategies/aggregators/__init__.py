"""Server aggregation rules, one file each, registered by name (config key ``aggregation``).

An aggregator turns the global model and the valid clients' models of a round into
the next global model::

    @AGGREGATORS.register("median")
    def median(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord: ...

``local`` is ordered by client id, so the arrival order of replies never changes a
sum.  A rule with settings of its own declares them, and the preconditions it needs on
the federation, when it registers (``settings=``, ``rules=``; fl_backdoor.settings),
and reads them with ``Setting.of(cfg)``.  Registering with ``server_lr=True`` says the rule scales the update by
``server-lr`` (the config then bounds ``gamma`` by n / server-lr); with
``server_round=True`` the rule is also given the round (keyword ``server_round``);
with ``memory=True`` it is given the clients' ids (``clients``, in ``local``'s order)
and ``memory``, a dict of tensors it may change and that persists across rounds: the
server saves it in every checkpoint, so a resumed run, and a defense run started from a
training's checkpoint, continue with it.

A rule that excludes or down-weights clients returns an :class:`Aggregate` with each
local model's factor (1 = as in the plain mean, 0 = excluded); the server then records
which clients it flagged against which were attacking (``metrics.csv``).  The factors
are reported only: no rule ever reads which clients attack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.registry import Registry


@dataclass(frozen=True)
class Aggregate:
    """The new global model, each local model's factor in it (in ``local``'s order), and extra metrics.

    ``metrics`` (such as DP's epsilon) go into the round's row of metrics.csv.
    """

    arrays: ArrayRecord
    factors: tuple[float, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def unchanged(cls, global_arrays: ArrayRecord, n: int, why: str) -> Aggregate:
        """The global model kept, no client counted (a round the rule cannot aggregate); prints why."""
        print(f"{why}; global model kept", flush=True)
        return cls(global_arrays, tuple(0.0 for _ in range(n)))


Aggregator = Callable[[ArrayRecord, list[ArrayRecord], ExperimentConfig], ArrayRecord | Aggregate]
AGGREGATORS: Registry[Aggregator] = Registry("aggregation", __name__, choices={"aggregation": Registry.names})


def round_context(name: str, server_round: int, clients: Sequence[int],
                  memory: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments aggregator ``name`` registered for (see the module docstring)."""
    meta = AGGREGATORS.meta(name)
    return {**({"server_round": server_round} if meta.get("server_round") else {}),
            **({"clients": list(clients), "memory": memory} if meta.get("memory") else {})}


def flatten(arrays: ArrayRecord, names: Sequence[str]) -> np.ndarray:
    """The named arrays as one float64 vector, in that order."""
    return np.concatenate([arrays[name].numpy().astype(np.float64).ravel() for name in names])


def flat_updates(global_arrays: ArrayRecord, local: list[ArrayRecord]) -> np.ndarray:
    """The clients' updates L_i - G as rows of one float64 matrix (n, d), arrays in the global model's order."""
    names = list(global_arrays.keys())
    return np.stack([flatten(arrays, names) for arrays in local]) - flatten(global_arrays, names)


def apply_update(global_arrays: ArrayRecord, update: np.ndarray) -> ArrayRecord:
    """G + update (a flat float64 vector), every array keeping its shape and dtype (integers rounded)."""
    out, start = {}, 0
    for name, array in global_arrays.items():
        g = array.numpy()
        new = g.astype(np.float64) + update[start:start + g.size].reshape(g.shape)
        start += g.size
        out[name] = Array(np.asarray(new if np.issubdtype(g.dtype, np.floating) else np.rint(new)).astype(g.dtype))
    return ArrayRecord(out)


def detection_counts(clients: Sequence[int], factors: Sequence[float],
                     attacking: Callable[[int], bool]) -> dict[str, Any]:
    """Which clients a rule flagged (factor below 1) against which were attacking, for metrics.csv.

    flagged_attackers are true positives, flagged_benign false positives; the mean factor
    of each group shows down-weighting that stops short of exclusion.
    """
    flagged = [c for c, f in zip(clients, factors, strict=True) if f < 1.0 - 1e-9]
    bad = {c for c in clients if attacking(c)}

    def mean_factor(group: set[int]) -> float:
        values = [f for c, f in zip(clients, factors, strict=True) if c in group]
        return float(np.mean(values)) if values else float("nan")

    return {"flagged": len(flagged), "flagged_clients": "/".join(map(str, flagged)),
            "flagged_attackers": sum(c in bad for c in flagged), "flagged_benign": sum(c not in bad for c in flagged),
            "attacker_factor": mean_factor(bad), "benign_factor": mean_factor(set(clients) - bad)}
