"""Bulyan (El Mhamdi et al., ICML 2018), with Flower's selection and coordinate rule.

Multi-Krum (Flower's ``select_multikrum``) keeps theta = n - 2f models; per
coordinate, the beta = theta - 2f values closest to their median are averaged
(Flower's ``aggregate_n_closest_weights``).  It needs n >= 4f + 3 models; a round with
fewer keeps the global model, as Flower's ``Bulyan`` strategy skips it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Rule

from . import AGGREGATORS, Aggregate, apply_update, flat_updates
from .krum import ROBUST_F, kept_by_multikrum


def bulyan_fits(cfg: ExperimentConfig) -> str | None:
    """Bulyan's condition n >= 4f + 3 (El Mhamdi et al.), on the clients of a round."""
    n, f = cfg.clients_per_round, ROBUST_F.of(cfg)
    if n >= 4 * f + 3:
        return None
    return (f"{f} assumed malicious of {n} clients per round: Bulyan needs n >= 4f + 3 "
            f"(here at least {4 * f + 3} clients)")


@AGGREGATORS.register("bulyan", settings=(ROBUST_F,),
                       rules=(Rule("robust-f", "clients per round >= 4 robust-f + 3 (Bulyan's condition)",
                                   bulyan_fits),))
def bulyan(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> Aggregate:
    """Multi-Krum selection of n - 2f models, then a coordinate-wise trimmed mean around the median."""
    n, f = len(local), ROBUST_F.of(cfg)
    if n < 4 * f + 3:
        return Aggregate.unchanged(global_arrays, n, f"bulyan: {n} models, but f={f} needs at least {4 * f + 3}")
    kept = kept_by_multikrum(local, f, n - 2 * f)
    # the closest-to-median rule is translation-invariant: run it on the updates, as one flat layer
    chosen = [[update] for update in flat_updates(global_arrays, [local[i] for i in kept])]
    median = np.median(np.stack([update for [update] in chosen]), axis=0)
    [combined] = aggregate_n_closest_weights([median], chosen, n - 4 * f)
    return Aggregate(apply_update(global_arrays, combined), tuple(1.0 if i in kept else 0.0 for i in range(n)))
