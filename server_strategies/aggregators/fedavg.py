"""FedAvg in the two forms of the papers.

* ``paper`` (cleansing paper, Sec. III-A): equal weights, G' = G + 1/n sum(L_i - G);
* ``dba`` (DBA reference): G' = G + eta/n sum(L_i - G) with the server learning rate eta.

Both are ``G + eta * (mean(L_i) - G)`` over the n clients of the round.  Flower's
FedAvg weighs clients by example count and averages in the arrays' own precision;
this mean is unweighted and in float64 (integer buffers rounded back), as both
papers' code computes it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fl_backdoor.config import ExperimentConfig

from . import AGGREGATORS


def average_update(global_arrays: ArrayRecord, local: list[ArrayRecord], eta: float) -> ArrayRecord:
    """G + eta * (mean(L_i) - G), keeping every array's dtype."""
    out = {}
    for name, g_array in global_arrays.items():
        g = g_array.numpy()
        mean = np.mean([arrays[name].numpy().astype(np.float64) for arrays in local], axis=0)
        new = g.astype(np.float64) + eta * (mean - g)
        out[name] = Array(np.asarray(new if np.issubdtype(g.dtype, np.floating) else np.rint(new)).astype(g.dtype))
    return ArrayRecord(out)


@AGGREGATORS.register("paper")
def paper(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord:
    """The cleansing paper's FedAvg: the mean of the clients' models."""
    return average_update(global_arrays, local, 1.0)


@AGGREGATORS.register("dba", server_lr=True)
def dba(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord:
    """DBA's FedAvg: the mean update scaled by server-lr."""
    return average_update(global_arrays, local, cfg.server_lr)
