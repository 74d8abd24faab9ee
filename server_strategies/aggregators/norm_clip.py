"""Norm clipping (Sun et al., "Can you really backdoor federated learning?", 2019).

Each update L_i - G is scaled into an L2 ball of radius S before the plain mean:
Delta_i * min(1, S / ||Delta_i||).  S is ``clip-norm``, or the round's median update
norm when that is 0 (the adaptive bound FLAME uses).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Setting

from . import AGGREGATORS, Aggregate, apply_update, flat_updates

CLIP_NORM = Setting("clip-norm", 0.0, "norm-clip: L2 bound on each client's update; 0 = the round's median update "
                                      "norm.", "federation", low=0.0, added=True)


def clip_factors(norms: np.ndarray, bound: float) -> np.ndarray:
    """min(1, bound / norm) per update (1 for a zero update)."""
    return np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))


@AGGREGATORS.register("norm-clip", settings=(CLIP_NORM,))
def norm_clip(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> Aggregate:
    """The mean of the updates, each clipped to norm ``clip-norm`` (or the median norm)."""
    updates = flat_updates(global_arrays, local)
    norms = np.linalg.norm(updates, axis=1)
    factors = clip_factors(norms, CLIP_NORM.of(cfg) or float(np.median(norms)))
    return Aggregate(apply_update(global_arrays, (factors[:, None] * updates).mean(axis=0)),
                     tuple(float(x) for x in factors))
