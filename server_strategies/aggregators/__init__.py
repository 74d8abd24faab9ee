"""Server aggregation rules, one file each, registered by name (config key ``aggregation``).

An aggregator turns the global model and the valid clients' models of a round into
the next global model::

    @AGGREGATORS.register("median")
    def median(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord: ...

``local`` is ordered by client id, so the arrival order of replies never changes a
sum.  Registering with ``server_lr=True`` says the rule scales the update by
``server-lr`` (the config then bounds ``gamma`` by n / server-lr).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.registry import Registry

Aggregator = Callable[[ArrayRecord, list[ArrayRecord], ExperimentConfig], ArrayRecord]
AGGREGATORS: Registry[Aggregator] = Registry("aggregation", __name__)
