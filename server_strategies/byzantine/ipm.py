"""Inner product manipulation (Xie et al., "Fall of empires", UAI 2019): the negated, scaled honest mean.

The malicious update is -epsilon * mu, mu the mean of the honest updates, so that the
aggregate's inner product with the true gradient turns negative.  A small epsilon
(``ipm-epsilon``, 0.1 by default) keeps the attackers close to the honest ones, the case
the paper shows Krum lets through.
"""

from __future__ import annotations

import numpy as np

from fl_backdoor.config import ExperimentConfig

from . import BYZANTINE


@BYZANTINE.register("ipm")
def ipm(honest: np.ndarray, n: int, m: int, cfg: ExperimentConfig) -> np.ndarray:
    """-epsilon * mean."""
    return -cfg.ipm_epsilon * honest.mean(axis=0)
