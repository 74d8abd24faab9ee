"""FedAvg in the two forms of the papers, on Flower's strategy API.

* paper (cleansing paper, Sec. III-A): equal weights, G' = G + 1/n sum(L_i - G);
* dba (DBA reference): G' = G + eta/n sum(L_i - G) with a server learning rate eta.

Both are ``G + eta * (mean(L_i) - G)`` over the n sampled clients (eta = 1 for the
paper's form).  Client sampling is seeded per round, so a resumed run samples the
same clients as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from defenses.masks import NeuronMask
from fl_backdoor import protocol
from fl_backdoor.config import ExperimentConfig


def average_update(global_arrays: ArrayRecord, locals_: list[ArrayRecord], eta: float) -> ArrayRecord:
    """G + eta * (mean(L_i) - G), keeping every array's dtype."""
    out = {}
    for name, g_array in global_arrays.items():
        g = g_array.numpy()
        mean = np.mean([l[name].numpy().astype(np.float64) for l in locals_], axis=0)
        new = g.astype(np.float64) + eta * (mean - g)
        out[name] = Array(np.asarray(new if np.issubdtype(g.dtype, np.floating) else np.rint(new)).astype(g.dtype))
    return ArrayRecord(out)


class BackdoorFedAvg(FedAvg):
    """FedAvg that addresses logical clients, forces attackers in, and averages equally."""

    def __init__(self, cfg: ExperimentConfig, client_nodes: dict[int, int]) -> None:
        super().__init__(fraction_train=cfg.fraction, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1)
        self.cfg = cfg
        self.client_nodes = client_nodes
        self.eta = cfg.server_lr if cfg.aggregation == "dba" else 1.0
        self.phase = "train"
        self.mask: NeuronMask | None = None
        self.sampled: list[int] = []
        self._global: ArrayRecord | None = None

    def summary(self) -> None:
        """Nothing to add to the run's own progress lines."""

    def sample_clients(self, server_round: int) -> list[int]:
        """Clients of this round: all, or a seeded random fraction (attackers forced in when configured)."""
        cfg = self.cfg
        everyone = list(range(cfg.num_clients))
        if cfg.fraction >= 1.0:
            return everyone
        rng = np.random.default_rng([cfg.seed, server_round, 0 if self.phase == "train" else 1])
        size = max(1, int(round(cfg.fraction * cfg.num_clients)))
        forced = []
        if cfg.attackers_always_selected and (self.phase == "finetune" or cfg.attacks_in_round(server_round)):
            forced = list(cfg.attackers)[:size]
        others = [c for c in everyone if c not in forced]
        chosen = forced + [int(c) for c in rng.choice(others, size - len(forced), replace=False)]
        return sorted(chosen)

    def client_messages(self, clients: list[int], arrays: ArrayRecord, config: ConfigRecord,
                        server_round: int, message_type: str) -> list[Message]:
        """One message per logical client, addressed to the node that plays it."""
        run_config = protocol.config_record(self.cfg)
        messages = []
        for client in clients:
            per_client = ConfigRecord({**dict(config.items()), "client-id": client, "server-round": server_round,
                                       "phase": self.phase, **protocol.mask_entries(self.mask)})
            content = RecordDict({protocol.ARRAYS: arrays, protocol.RUN_CONFIG: run_config,
                                  protocol.CONFIG: per_client})
            messages.append(Message(content=content, dst_node_id=self.client_nodes[client],
                                    message_type=message_type))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Train messages for the clients sampled in this round."""
        self._global = arrays
        self.sampled = self.sample_clients(server_round)
        return self.client_messages(self.sampled, arrays, config, server_round, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Evaluate messages (local accuracy) for every client."""
        return self.client_messages(list(range(self.cfg.num_clients)), arrays, config, server_round,
                                    MessageType.EVALUATE)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the replies into the new global model (None when too few arrived)."""
        valid = [r for r in replies if not r.has_error()]
        if len(valid) < self.cfg.min_replies or self._global is None:
            return None, MetricRecord({"replies": len(valid)})
        locals_ = [r.content[protocol.ARRAYS] for r in valid]
        arrays = average_update(self._global, locals_, self.eta)
        losses = [float(r.content[protocol.METRICS]["train-loss"]) for r in valid]
        return arrays, MetricRecord({"replies": len(valid), "train-loss": float(np.mean(losses))})
