"""Inner product manipulation (Xie et al., "Fall of empires", UAI 2019): the negated, scaled honest mean.

The malicious update is -epsilon * mu, mu the mean of the honest updates, so that the
aggregate's inner product with the true gradient turns negative.  A small epsilon
(``ipm-epsilon``, 0.1 by default) keeps the attackers close to the honest ones, the case
the paper shows Krum lets through.
"""

from __future__ import annotations

import numpy as np

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Setting

from . import BYZANTINE

EPSILON = Setting("ipm-epsilon", 0.1, "ipm: epsilon of -epsilon x the honest mean.", "attack", low=0.0, low_open=True,
                  added=True)


@BYZANTINE.register("ipm", settings=(EPSILON,))
def ipm(honest: np.ndarray, n: int, m: int, cfg: ExperimentConfig) -> np.ndarray:
    """-epsilon * mean."""
    return -EPSILON.of(cfg) * honest.mean(axis=0)
