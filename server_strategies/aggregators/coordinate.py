"""Coordinate-wise rules: the median (Yin et al., ICML 2018; Flower's FedMedian) and the
trimmed mean (Flower's FedTrimmedAvg, with its ``trim_mean``).

Both act per coordinate, so no client is excluded as a whole: they report no factors.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fl_backdoor.config import ExperimentConfig

from . import AGGREGATORS, apply_update, flat_updates


@AGGREGATORS.register("median")
def median(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord:
    """G + the coordinate-wise median of the updates (the median of the models, as FedMedian)."""
    return apply_update(global_arrays, np.median(flat_updates(global_arrays, local), axis=0))


@AGGREGATORS.register("trimmed-mean")
def trimmed_mean(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord:
    """G + the coordinate-wise mean after cutting ``trim-fraction`` of the values at each end."""
    return apply_update(global_arrays, trim_mean(flat_updates(global_arrays, local), cfg.trim_fraction))
