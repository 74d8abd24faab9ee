"""FoolsGold (Fung et al., RAID 2020, Algorithm 1): down-weight clients whose update histories look alike.

Sybils pushing one backdoor send similar updates round after round; honest clients with
different data do not.  Per round, over the clients that replied:

1. H_i, the sum of client i's updates over every round it took part in (kept across
   rounds and resumes in the server's checkpoints);
2. cs_ij = cos(H_i, H_j) for i != j, and v_i = max_j cs_ij;
3. pardoning: cs_ij *= v_i / v_j wherever v_i < v_j (an honest client that merely
   resembles a sybil is not punished for the sybil's similarity);
4. alpha_i = 1 - max_j cs_ij, clipped to [0, 1], divided by its maximum, 1 -> 0.99;
5. alpha_i = kappa * (ln(alpha_i / (1 - alpha_i)) + 0.5), clipped to [0, 1]
   (kappa = ``foolsgold-confidence``, the paper's confidence parameter, 1).

The new model is G + (1/n) sum_i alpha_i (L_i - G): a round in which every alpha is 1
is FedAvg's round (the reference applies the alpha-weighted sum of gradients; with
FedAvg's model updates the sum is divided by n).  alpha_i is the client's reported
factor.

The features compared are the whole update (``foolsgold-features=all``, as in the
reference code) or the weights of the model's last layer (``output``, the paper's
"indicative features" of the output layer), which keeps the histories small for large
models: they take clients x features x 4 bytes in every checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.errors import ConfigError
from fl_backdoor.settings import Setting

from . import AGGREGATORS, Aggregate, apply_update, flat_updates

MAX_HISTORY_BYTES = 2**30


def foolsgold_weights(histories: np.ndarray, confidence: float = 1.0) -> np.ndarray:
    """alpha per client (rows of ``histories`` are the clients' summed updates), Algorithm 1 steps 2-5."""
    n = len(histories)
    from sklearn.metrics.pairwise import cosine_similarity  # here: a process that loads the rules does not pay 1 s

    cs = cosine_similarity(histories) - np.eye(n)
    v = cs.max(axis=1) if n > 1 else np.zeros(n)
    pardon = (v[:, None] < v[None, :]) & (v[None, :] > 0)
    cs = np.where(pardon, cs * v[:, None] / np.where(v[None, :] > 0, v[None, :], 1.0), cs)
    alpha = np.clip(1.0 - (cs.max(axis=1) if n > 1 else np.zeros(n)), 0.0, 1.0)
    if alpha.max() <= 0:
        return alpha
    alpha = alpha / alpha.max()
    alpha[alpha == 1.0] = 0.99
    with np.errstate(divide="ignore"):
        alpha = confidence * (np.log(alpha / (1.0 - alpha)) + 0.5)
    return np.clip(np.nan_to_num(alpha, posinf=1.0, neginf=0.0), 0.0, 1.0)


def feature_columns(global_arrays: ArrayRecord, features: str) -> slice:
    """The columns of ``flat_updates`` FoolsGold compares: all, or the last layer's weight (last array of 2+ dims)."""
    sizes = {name: array.numpy().size for name, array in global_arrays.items()}
    if features == "all":
        return slice(0, sum(sizes.values()))
    names = list(sizes)
    last = [n for n in names if global_arrays[n].numpy().ndim >= 2][-1]
    start = sum(sizes[n] for n in names[:names.index(last)])
    return slice(start, start + sizes[last])


FEATURES = Setting("foolsgold-features", "all", "foolsgold: the update histories compared: all (the reference "
                                               "code) or output (the last layer's weights).", "federation",
                   choices=("all", "output"), added=True)
CONFIDENCE = Setting("foolsgold-confidence", 1.0, "foolsgold: kappa of the logit (the paper's 1).", "federation",
                     low=0.0, low_open=True, added=True)


@AGGREGATORS.register("foolsgold", settings=(FEATURES, CONFIDENCE), memory=True)
def foolsgold(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig,
              clients: list[int] | None = None, memory: dict[str, torch.Tensor] | None = None) -> Aggregate:
    """The mean of the updates, each weighted by FoolsGold's alpha from the clients' update histories."""
    clients = list(range(len(local))) if clients is None else clients
    memory = {} if memory is None else memory
    columns = feature_columns(global_arrays, FEATURES.of(cfg))
    width = columns.stop - columns.start
    if cfg.num_clients * width * 4 > MAX_HISTORY_BYTES:
        raise ConfigError(f"foolsgold-features: the histories of {cfg.num_clients} clients x {width} parameters "
                          f"would take {cfg.num_clients * width * 4 / 2**30:.1f} GiB in every checkpoint; "
                          f"use foolsgold-features=output")
    updates = flat_updates(global_arrays, local)
    for c, row in zip(clients, updates, strict=True):
        update = torch.from_numpy(row[columns].astype(np.float32))
        memory[f"foolsgold/{c}"] = memory[f"foolsgold/{c}"] + update if f"foolsgold/{c}" in memory else update
    histories = np.stack([memory[f"foolsgold/{c}"].numpy().astype(np.float64) for c in clients])
    alpha = foolsgold_weights(histories, CONFIDENCE.of(cfg))
    if not alpha.any():
        return Aggregate.unchanged(global_arrays, len(local), "foolsgold: every client weighed 0")
    return Aggregate(apply_update(global_arrays, (alpha[:, None] * updates).mean(axis=0)),
                     tuple(float(a) for a in alpha))
