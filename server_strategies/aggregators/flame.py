"""FLAME (Nguyen et al., USENIX Security 2022, Algorithm 1).

1. Pairwise cosine distances of the local models W_i (the paper clusters the models
   themselves, not their updates);
2. HDBSCAN (scikit-learn) with min_cluster_size = n/2 + 1, min_samples = 1 and a single
   cluster allowed: the models it labels as outliers are excluded;
3. every admitted update is clipped to S = the median of all n update norms ||W_i - G||;
4. G' = the mean of the clipped admitted models, plus Gaussian noise of standard
   deviation lambda * S on every parameter (``flame-lambda``; the paper uses 0.001 for
   image classification).

A round in which HDBSCAN admits no model keeps the global model.  The noise is drawn
from a generator seeded by the run's seed and the global model's bytes, so a resumed
run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import ArrayRecord

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Rule, Setting

from . import AGGREGATORS, Aggregate, apply_update, flatten
from .norm_clip import clip_factors

FLAME_LAMBDA = Setting("flame-lambda", 0.001, "flame: Gaussian noise sigma = lambda x the median update norm "
                                              "(FLAME's value for image classification).", "federation", low=0.0,
                       added=True)
MIN_CLUSTERED = 3  # HDBSCAN with min_cluster_size n/2 + 1 separates nothing among fewer models


def clusters(cfg: ExperimentConfig) -> str | None:
    """FLAME's clustering needs at least 3 models in a round."""
    n = cfg.clients_per_round
    if n >= MIN_CLUSTERED:
        return None
    return f"{n} clients per round: FLAME's clustering needs at least {MIN_CLUSTERED} models, it would only clip"


def flame_admitted(models: np.ndarray) -> np.ndarray:
    """Boolean mask of the models HDBSCAN puts in a cluster (rows of ``models`` are flat models)."""
    from sklearn.cluster import HDBSCAN  # here, not at the top: every process that loads the rules would pay 1 s
    from sklearn.metrics.pairwise import cosine_distances

    n = len(models)
    if n < MIN_CLUSTERED:
        return np.ones(n, dtype=bool)
    distances = cosine_distances(models).clip(min=0.0)
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed",
                     allow_single_cluster=True, copy=True).fit_predict(distances)
    return np.asarray(labels != -1)


def model_seed(global_arrays: ArrayRecord, seed: int) -> list[int]:
    """A per-round seed: the run's seed and a digest of the global model."""
    digest = hashlib.sha256()
    for name, array in global_arrays.items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array.numpy()).tobytes())
    return [seed, int.from_bytes(digest.digest()[:8], "little")]


@AGGREGATORS.register("flame", settings=(FLAME_LAMBDA,),
                       rules=(Rule("num-clients", "clients per round >= 3 (FLAME's clustering)", clusters),))
def flame(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> Aggregate:
    """Cluster out the odd models, clip the rest to the median norm, average, add noise."""
    names = list(global_arrays.keys())
    models = np.stack([flatten(arrays, names) for arrays in local])
    updates = models - flatten(global_arrays, names)
    admitted = flame_admitted(models)
    norms = np.linalg.norm(updates, axis=1)
    bound = float(np.median(norms))
    factors = np.where(admitted, clip_factors(norms, bound), 0.0)
    if not admitted.any():
        return Aggregate.unchanged(global_arrays, len(local), "flame: HDBSCAN admitted no model")
    update = (factors[:, None] * updates)[admitted].mean(axis=0)
    noise = np.random.default_rng(model_seed(global_arrays, cfg.seed)).normal(0.0, FLAME_LAMBDA.of(cfg) * bound,
                                                                               update.size)
    return Aggregate(apply_update(global_arrays, update + noise), tuple(float(x) for x in factors))
