"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017), with Flower's own selection.

The selection is Flower's pure ``select_multikrum`` (flwr.serverapp.strategy): each
model is scored by the summed squared distance to its n - f - 2 nearest models, and
the m lowest scores are kept.  The kept models are then averaged with equal weights,
as the paper's FedAvg does, where Flower's strategy would weigh them by example
count (which clients report themselves).  f is ``robust-f``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict
from flwr.serverapp.strategy.multikrum import select_multikrum

from fl_backdoor.config import ExperimentConfig

from . import AGGREGATORS, Aggregate
from .fedavg import average_update


def kept_by_multikrum(local: list[ArrayRecord], f: int, m: int) -> list[int]:
    """Indices (into ``local``) of the m models Multi-Krum keeps, ascending."""
    contents = [RecordDict({"arrays": arrays}) for arrays in local]
    chosen = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=m)
    return sorted(next(i for i, c in enumerate(contents) if c is kept) for kept in chosen)


def selected_mean(global_arrays: ArrayRecord, local: list[ArrayRecord], kept: list[int]) -> Aggregate:
    """The plain mean of the kept models; factor 1 for them, 0 for the others."""
    return Aggregate(average_update(global_arrays, [local[i] for i in kept], 1.0),
                     tuple(1.0 if i in kept else 0.0 for i in range(len(local))))


@AGGREGATORS.register("krum")
def krum(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> Aggregate:
    """The one model closest to its n - f - 2 neighbours becomes the global model."""
    return selected_mean(global_arrays, local, kept_by_multikrum(local, cfg.robust_f, 1))


@AGGREGATORS.register("multikrum")
def multikrum(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> Aggregate:
    """The mean of the m models of lowest Krum score (m = ``multikrum-select``, or n - f)."""
    m = cfg.multikrum_select or max(1, len(local) - cfg.robust_f)
    return selected_mean(global_arrays, local, kept_by_multikrum(local, cfg.robust_f, min(m, len(local))))
