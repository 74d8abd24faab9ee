"""Bulyan (El Mhamdi et al., ICML 2018), with Flower's selection and coordinate rule.

Multi-Krum (Flower's ``select_multikrum``) keeps theta = n - 2f models; per
coordinate, the beta = theta - 2f values closest to their median are averaged
(Flower's ``aggregate_n_closest_weights``).  It needs n >= 4f + 3 models; a round with
fewer keeps the global model, as Flower's ``Bulyan`` strategy skips it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights

from fl_backdoor.config import ExperimentConfig

from . import AGGREGATORS, Aggregate
from .krum import kept_by_multikrum


@AGGREGATORS.register("bulyan")
def bulyan(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> Aggregate:
    """Multi-Krum selection of n - 2f models, then a coordinate-wise trimmed mean around the median."""
    n, f = len(local), cfg.robust_f
    if n < 4 * f + 3:
        print(f"bulyan: {n} models, but f={f} needs at least {4 * f + 3}; global model kept", flush=True)
        return Aggregate(global_arrays, tuple(0.0 for _ in local))
    kept = kept_by_multikrum(local, f, n - 2 * f)
    names = list(global_arrays.keys())
    chosen = [[local[i][name].numpy().astype(np.float64) for name in names] for i in kept]
    medians = [np.median(np.stack(layer), axis=0) for layer in zip(*chosen, strict=True)]
    combined = aggregate_n_closest_weights(medians, chosen, n - 4 * f)
    arrays = {}
    for name, value in zip(names, combined, strict=True):
        dtype = global_arrays[name].numpy().dtype
        arrays[name] = Array(np.asarray(value if np.issubdtype(dtype, np.floating) else np.rint(value)).astype(dtype))
    return Aggregate(ArrayRecord(arrays), tuple(1.0 if i in kept else 0.0 for i in range(n)))
