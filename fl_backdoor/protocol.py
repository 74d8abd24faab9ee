"""What travels in the Flower messages between the ServerApp and the ClientApps.

Every message carries:

* ``arrays`` (ArrayRecord): the global model's state dict;
* ``run-config`` (ConfigRecord): the server's resolved, validated run config, so
  a client behaves the same under ``flwr run``, the Python API and a Ray cluster;
* ``config`` (ConfigRecord): per-message values: ``client-id`` (the logical client
  the node plays), ``server-round``, ``phase`` and the pruning mask.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord

from fl_backdoor.masks import NeuronMask
from fl_backdoor.config import ExperimentConfig

ARRAYS = "arrays"
RUN_CONFIG = "run-config"
CONFIG = "config"
METRICS = "metrics"

# message types: train and evaluate are Flower's; the cleansing phases are queries
DESCRIBE = "query.describe"
RANK_NEURONS = "query.rank_neurons"
CANDIDATE_ACCURACY = "query.candidate_accuracy"

_CONFIG_CACHE: dict[str, ExperimentConfig] = {}


def config_record(cfg: ExperimentConfig) -> ConfigRecord:
    """The run config as a ConfigRecord."""
    return ConfigRecord(cfg.to_flat())


def read_config(record: ConfigRecord) -> ExperimentConfig:
    """The run config a message carries (parsed once per distinct config per process)."""
    flat = dict(record.items())
    key = json.dumps(flat, sort_keys=True)
    if key not in _CONFIG_CACHE:
        _CONFIG_CACHE[key] = ExperimentConfig.from_flat(flat)
    return _CONFIG_CACHE[key]


def mask_entries(mask: NeuronMask | None) -> dict:
    """ConfigRecord entries describing a mask (none when there is no mask)."""
    if mask is None:
        return {}
    return {"mask-layer": mask.layer, "mask-size": mask.size, "mask-pruned": list(mask.pruned)}


def read_mask(record: ConfigRecord) -> NeuronMask | None:
    """The mask in a message's config, if any."""
    if "mask-layer" not in record:
        return None
    return NeuronMask(str(record["mask-layer"]), int(record["mask-size"]),
                      tuple(int(i) for i in record.get("mask-pruned", [])))
