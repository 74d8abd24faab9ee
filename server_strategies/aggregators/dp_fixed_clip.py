"""Central differential privacy with fixed clipping (DP-FedAvg, McMahan et al., ICLR 2018), as Flower does it.

This is the arithmetic of Flower's ``DifferentialPrivacyServerSideFixedClipping``
wrapped around FedAvg, built from Flower's own pieces:

1. every update L_i - G is clipped to L2 norm C (``dp-clip-norm``);
2. the clipped updates are averaged;
3. Gaussian noise of standard deviation ``compute_stdv(z, C, m)`` = z * C / m is added
   to every parameter, z = ``dp-noise-multiplier``, m = the clients sampled per round
   (Flower's ``num_sampled_clients``);
4. Flower's RDP accountant (``flwr.supercore.privacy_accounting``, the ``dp-accounting``
   package underneath) composes one Gaussian release per round with Flower's only
   supported fixed-clipping model (no sampling amplification, add-or-remove-one
   neighbouring): ``epsilon`` at ``dp-delta`` goes into every row of metrics.csv.

Flower's wrapper itself is not called: it drives its own sampling through a Grid and
expects FedAvg's weighted messages, while the server here samples, validates replies and
books attackers itself; and it draws noise from NumPy's global generator, so a resumed
run would not repeat it.  The noise here comes from a generator seeded by the run's seed
and the global model, as FLAME's does.  A round counts as one release whether or not it
aggregated, so epsilon after round t is the cost of t releases (an upper bound when a
round was skipped): it needs no state to survive a resume.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr.app import ArrayRecord
from flwr.supercore.differential_privacy import compute_stdv
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Setting

from . import AGGREGATORS, Aggregate, apply_update, flat_updates
from .flame import model_seed
from .norm_clip import clip_factors


@lru_cache(maxsize=256)
def epsilon_after(releases: int, noise_multiplier: float, sampled: int, population: int, delta: float) -> float:
    """Epsilon at delta after ``releases`` Gaussian releases, from Flower's RDP accountant."""
    accountant = RdpAccountant(PrivacyConfig(target_delta=delta, population_size=population,
                                             neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                             sampling_method=SamplingMethod.NO_AMPLIFICATION))
    accountant.compose(GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=sampled,
                                            population_size=population), count=releases)
    return accountant.get_privacy_spent().epsilon


CLIP = Setting("dp-clip-norm", 3.0, "dp-fixed-clip: L2 bound C on each update (Sun et al. 2019's norm bound 3).",
               "federation", low=0.0, low_open=True, added=True)
NOISE = Setting("dp-noise-multiplier", 0.25, "dp-fixed-clip: z; noise sigma = z * C / clients per round (Sun et al.'s "
                                             "weak DP: 0.025 at C 3, 30 clients).", "federation", low=0.0,
                low_open=True, added=True)
DELTA = Setting("dp-delta", 1e-5, "dp-fixed-clip: the delta at which epsilon is reported.", "federation", low=0.0,
                high=1.0, low_open=True, high_open=True, added=True)


@AGGREGATORS.register("dp-fixed-clip", settings=(CLIP, NOISE, DELTA), server_round=True)
def dp_fixed_clip(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig,
                  server_round: int = 1) -> Aggregate:
    """The mean of the updates clipped to dp-clip-norm, plus Gaussian noise z*C/m; reports epsilon."""
    updates = flat_updates(global_arrays, local)
    clip, noise_multiplier = CLIP.of(cfg), NOISE.of(cfg)
    factors = clip_factors(np.linalg.norm(updates, axis=1), clip)
    stdv = compute_stdv(noise_multiplier, clip, cfg.clients_per_round)
    noise = np.random.default_rng(model_seed(global_arrays, cfg.seed)).normal(0.0, stdv, updates.shape[1])
    update = (factors[:, None] * updates).mean(axis=0) + noise
    epsilon = epsilon_after(server_round, noise_multiplier, cfg.clients_per_round, cfg.num_clients, DELTA.of(cfg))
    return Aggregate(apply_update(global_arrays, update), tuple(float(x) for x in factors),
                     metrics={"epsilon": round(epsilon, 4)})
