"""Coordinate-wise rules: the median (Yin et al., ICML 2018; Flower's FedMedian) and the
trimmed mean (Flower's FedTrimmedAvg, with its ``trim_mean``).

Both act per coordinate, so no client is excluded as a whole: they report no factors.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Rule, Setting

from . import AGGREGATORS, apply_update, flat_updates

TRIM_FRACTION = Setting("trim-fraction", 0.2, "trimmed-mean: fraction cut at each end of every coordinate (Flower's "
                                              "FedTrimmedAvg beta).", "federation", low=0.0, high=0.5,
                        high_open=True, added=True)


def trims_something(cfg: ExperimentConfig) -> str | None:
    """The trimmed mean cuts int(beta * n) values at each end (Flower's trim_mean): at least one."""
    beta, n = TRIM_FRACTION.of(cfg), cfg.clients_per_round
    if int(beta * n) >= 1:
        return None
    return (f"{beta:g} of {n} clients per round trims no value at either end, so trimmed-mean would be the plain "
            f"mean: use trim-fraction >= 1/{n}")


@AGGREGATORS.register("median")
def median(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord:
    """G + the coordinate-wise median of the updates (the median of the models, as FedMedian)."""
    return apply_update(global_arrays, np.median(flat_updates(global_arrays, local), axis=0))


@AGGREGATORS.register("trimmed-mean", settings=(TRIM_FRACTION,),
                       rules=(Rule("trim-fraction", "int(trim-fraction x clients per round) >= 1", trims_something),))
def trimmed_mean(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord:
    """G + the coordinate-wise mean after cutting ``trim-fraction`` of the values at each end."""
    return apply_update(global_arrays, trim_mean(flat_updates(global_arrays, local), TRIM_FRACTION.of(cfg)))
