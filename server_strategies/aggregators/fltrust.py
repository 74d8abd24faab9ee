"""FLTrust (Cao et al., NDSS 2021, Algorithm 2): trust bootstrapped from the server's clean root data.

Each round the server trains the global model on its root dataset the way an honest
client trains (``lr`` with its decay, ``local-epochs``, ``batch-size``), giving the
server update g0.  Client update g_i gets the trust score TS_i = ReLU(cos(g_i, g0)) and
is rescaled to the norm of g0; the new model is G + sum(TS_i * g_i * ||g0|| / ||g_i||) /
sum(TS_i).  The root dataset is the server's validation set (``validation-fraction`` of
the training data, never given to a client); the paper's root set is 100 samples.

The reported factor of a client is its share relative to an equal share, n * TS_i /
sum(TS): below 1 it was down-weighted, 0 excluded.  A round in which every trust score
is 0 keeps the global model.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from clients.local_training import benign_settings
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import validation_set
from fl_backdoor.models import build_model
from fl_backdoor.training import train

from . import AGGREGATORS, Aggregate, apply_update, flat_updates

SERVER_STREAM = 3  # shuffling stream of the server's root training, apart from the clients' phase codes


def root_update(global_arrays: ArrayRecord, cfg: ExperimentConfig, server_round: int) -> np.ndarray:
    """g0: the flat update of one honest local training job on the server's root data."""
    model = build_model(cfg)
    model.load_state_dict(global_arrays.to_torch_state_dict())
    root = validation_set(cfg)
    seed = np.random.SeedSequence([cfg.seed, server_round, SERVER_STREAM]).generate_state(1)[0]
    train(model, root.x, root.y, benign_settings(cfg, server_round), torch.Generator().manual_seed(int(seed)))
    trained = ArrayRecord({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    return flat_updates(global_arrays, [trained])[0]


def trust_weighted(updates: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(the aggregated update, each client's trust score); None when every score is 0."""
    tiny = np.finfo(np.float64).tiny
    norms, root_norm = np.linalg.norm(updates, axis=1), float(np.linalg.norm(root))
    trust = np.maximum(updates @ root / np.maximum(norms * root_norm, tiny), 0.0)
    if trust.sum() <= 0:
        return None
    rescaled = updates * (root_norm / np.maximum(norms, tiny))[:, None]
    return (trust[:, None] * rescaled).sum(axis=0) / trust.sum(), trust


@AGGREGATORS.register("fltrust", server_round=True)
def fltrust(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig,
            server_round: int = 1) -> Aggregate:
    """Trust-weighted mean of the client updates, each rescaled to the norm of the server's update."""
    result = trust_weighted(flat_updates(global_arrays, local), root_update(global_arrays, cfg, server_round))
    if result is None:
        return Aggregate.unchanged(global_arrays, len(local), "fltrust: every client update points away from the "
                                                              "server's")
    update, trust = result
    return Aggregate(apply_update(global_arrays, update), tuple(float(x) for x in len(local) * trust / trust.sum()))
