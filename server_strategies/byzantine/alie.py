"""A Little Is Enough (Baruch et al., NeurIPS 2019, Sec. 4): stay within z standard deviations of the mean.

Every coordinate of the malicious update is mu_j - z * sigma_j, mu and sigma the
coordinate-wise mean and standard deviation of the honest updates.  z is the largest
shift for which the attackers still pass for a majority: with n clients and m attackers,
s = floor(n/2 + 1) - m honest clients must be "further" than the attackers, and
z = Phi^-1((n - s) / n) (the paper's z_max).  ``alie-z`` > 0 fixes z instead.
"""

from __future__ import annotations

import math

import numpy as np

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Setting

from . import BYZANTINE

ALIE_Z = Setting("alie-z", 0.0, "alie: z; 0 = the paper's z_max from n and m.", "attack", low=0.0, added=True)


def alie_z(n: int, m: int) -> float:
    """The paper's z_max for n clients of which m attack.

    With a majority of attackers (s <= 0) the formula asks for Phi^-1 of 1 or more; z is then
    taken at the largest s that leaves a probability below 1, s = 1.
    """
    s = max(math.floor(n / 2 + 1) - m, 1)
    from scipy.stats import norm  # here: a process that loads the attacks does not pay for scipy.stats

    return float(norm.ppf((n - s) / n))


@BYZANTINE.register("alie", settings=(ALIE_Z,))
def alie(honest: np.ndarray, n: int, m: int, cfg: ExperimentConfig) -> np.ndarray:
    """mean - z * std, coordinate-wise."""
    z = ALIE_Z.of(cfg) or alie_z(n, m)
    return honest.mean(axis=0) - z * honest.std(axis=0)
