"""Min-Max (Shejwalkar & Houmansadr, NDSS 2021, Sec. IV, the aggregation-agnostic attack).

The malicious update is mu + gamma * p with p = -sigma (the paper's inverse standard
deviation perturbation), mu and sigma the coordinate-wise mean and standard deviation of
the honest updates, and gamma the largest value for which the malicious update is no
farther from any honest update than the two farthest honest updates are from each other:
max_i ||m - b_i|| <= max_ij ||b_i - b_j||.  gamma is found as in the paper's Algorithm 1:
start at gamma_init = 10 (``minmax-gamma``) and halve the step, up while the condition
holds and down while it does not, until the step is below tau = 1e-5.
"""

from __future__ import annotations

import numpy as np

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Setting

from . import BYZANTINE

GAMMA_INIT = Setting("minmax-gamma", 10.0, "minmax: gamma_init of the paper's search.", "attack", low=0.0,
                     low_open=True, added=True)

TAU = 1e-5


def minmax_gamma(honest: np.ndarray, direction: np.ndarray, gamma_init: float) -> float:
    """The largest gamma (to TAU) with max_i ||mu + gamma p - b_i|| <= the largest honest pairwise distance."""
    mean = honest.mean(axis=0)
    from sklearn.metrics import pairwise_distances  # here: a process that loads the attacks does not pay 1 s

    limit = float(pairwise_distances(honest).max())

    def passes(gamma: float) -> bool:
        return float(np.linalg.norm(honest - (mean + gamma * direction), axis=1).max()) <= limit

    gamma, step, found = gamma_init, gamma_init / 2, 0.0
    while step > TAU:
        if passes(gamma):
            found = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return found


@BYZANTINE.register("minmax", settings=(GAMMA_INIT,))
def minmax(honest: np.ndarray, n: int, m: int, cfg: ExperimentConfig) -> np.ndarray:
    """mean - gamma * std, gamma as large as the honest updates' spread allows."""
    direction = -honest.std(axis=0)
    return honest.mean(axis=0) + minmax_gamma(honest, direction, GAMMA_INIT.of(cfg)) * direction
