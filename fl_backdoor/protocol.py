"""What travels in the Flower messages between the ServerApp and the ClientApps.

Every message carries:

* ``arrays`` (ArrayRecord): the global model's state dict;
* ``run-config`` (ConfigRecord): the server's resolved, validated run config, so
  a client behaves the same under ``flwr run``, the Python API and a Ray cluster;
* ``config`` (ConfigRecord): per-message values: ``client-id`` (the logical client
  the node plays), ``server-round``, ``phase`` and the pruning mask.

Message types: Flower's train and evaluate, ``DESCRIBE`` (which node plays which client)
and ``PHASE_QUERY``, the one type of every defense phase's client query, whose config
names the registered query (``QUERY_NAME``).  A train message may name a phase's training
variant (``TRAINING``).  The queries and variants themselves are registered by the phases.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.masks import NeuronMask

ARRAYS = "arrays"
RUN_CONFIG = "run-config"
CONFIG = "config"
METRICS = "metrics"

DESCRIBE = "query.describe"
PHASE_QUERY = "query.phase"
QUERY_NAME = "query"  # config entry of a PHASE_QUERY: the registered query it asks for
TRAINING = "training"  # config entry of a train message: a registered training variant (empty = plain SGD)

_CONFIG_CACHE: dict[str, ExperimentConfig] = {}
N = TypeVar("N", int, float)


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


def mask_entries(mask: NeuronMask | None) -> dict[str, str | int | list[int]]:
    """ConfigRecord entries describing a mask (none when there is no mask)."""
    if mask is None:
        return {}
    return {"mask-layer": mask.layer, "mask-size": mask.size, "mask-pruned": list(mask.pruned)}


def read_mask(record: ConfigRecord) -> NeuronMask | None:
    """The mask in a message's config, if any."""
    if "mask-layer" not in record:
        return None
    return NeuronMask(str(record["mask-layer"]), number(record, "mask-size", int),
                      tuple(numbers(record, "mask-pruned", int)))


def number(record: ConfigRecord | MetricRecord, key: str, kind: type[N]) -> N:
    """A numeric entry of a record as ``kind``; ValueError when it is not a number."""
    value = record[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"'{key}' is not a number: {value!r}")
    return kind(value)


def numbers(record: ConfigRecord | Mapping[str, Any], key: str, kind: type[N]) -> list[N]:
    """A list entry of numbers (empty when absent); ValueError when it holds anything else."""
    values = record.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"'{key}' is not a list of numbers")
    return [kind(v) for v in values]


def wire_bytes(content: RecordDict) -> int:
    """The size of a message's content as Flower serialises it (its protobuf), in bytes."""
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(content).ByteSize())
