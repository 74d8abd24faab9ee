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
from fl_backdoor.settings import Rule, Setting

from . import AGGREGATORS, Aggregate
from .fedavg import average_update

ROBUST_F = Setting("robust-f", 1, "Malicious clients the Byzantine-robust rules (krum, multikrum, bulyan) assume: "
                                  "the defender's guess, never read from the attack settings.", "federation", low=0,
                   added=True)
MULTIKRUM_SELECT = Setting("multikrum-select", 0, "multikrum: models averaged (m); 0 = n - f.", "federation", low=0,
                           added=True)


def krum_fits(cfg: ExperimentConfig) -> str | None:
    """Krum's condition n > 2f + 2 (Blanchard et al., Proposition 1), on the clients of a round."""
    n, f = cfg.clients_per_round, ROBUST_F.of(cfg)
    if n > 2 * f + 2:
        return None
    return f"{f} assumed malicious of {n} clients per round: Krum needs n > 2f + 2 (here at least {2 * f + 3} clients)"


def multikrum_select_fits(cfg: ExperimentConfig) -> str | None:
    """Multi-Krum averages m of the round's n models: m <= n."""
    m, n = MULTIKRUM_SELECT.of(cfg), cfg.clients_per_round
    return None if m <= n else f"{m} models to average, but only {n} clients per round"


KRUM_RULE = Rule("robust-f", "clients per round > 2 robust-f + 2 (Krum's condition)", krum_fits)


def kept_by_multikrum(local: list[ArrayRecord], f: int, m: int) -> list[int]:
    """Indices (into ``local``) of the m models Multi-Krum keeps, ascending."""
    contents = [RecordDict({"arrays": arrays}) for arrays in local]
    chosen = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=m)
    return sorted(next(i for i, c in enumerate(contents) if c is kept) for kept in chosen)


def selected_mean(global_arrays: ArrayRecord, local: list[ArrayRecord], kept: list[int]) -> Aggregate:
    """The plain mean of the kept models; factor 1 for them, 0 for the others."""
    return Aggregate(average_update(global_arrays, [local[i] for i in kept], 1.0),
                     tuple(1.0 if i in kept else 0.0 for i in range(len(local))))


@AGGREGATORS.register("krum", settings=(ROBUST_F,), rules=(KRUM_RULE,))
def krum(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> Aggregate:
    """The one model closest to its n - f - 2 neighbours becomes the global model."""
    return selected_mean(global_arrays, local, kept_by_multikrum(local, ROBUST_F.of(cfg), 1))


@AGGREGATORS.register("multikrum", settings=(ROBUST_F, MULTIKRUM_SELECT),
                       rules=(KRUM_RULE, Rule("multikrum-select", "multikrum-select <= clients per round",
                                              multikrum_select_fits)))
def multikrum(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> Aggregate:
    """The mean of the m models of lowest Krum score (m = ``multikrum-select``, or n - f)."""
    f = ROBUST_F.of(cfg)
    m = MULTIKRUM_SELECT.of(cfg) or max(1, len(local) - f)
    return selected_mean(global_arrays, local, kept_by_multikrum(local, f, min(m, len(local))))
