"""FedAvg in the two forms of the papers, on Flower's strategy API.

* paper (cleansing paper, Sec. III-A): equal weights, G' = G + 1/n sum(L_i - G);
* dba (DBA reference): G' = G + eta/n sum(L_i - G) with a server learning rate eta.

Both are ``G + eta * (mean(L_i) - G)`` over the n sampled clients (eta = 1 for the
paper's form).  Client sampling is seeded per round, so a resumed run samples the
same clients as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fl_backdoor.masks import NeuronMask
from fl_backdoor import protocol
from fl_backdoor.attacks import is_attacking
from fl_backdoor.config import ExperimentConfig
from server_strategies.reply_checks import Checker, InvalidReply, evaluate_checker, model_checker


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
        self.outgoing: list[tuple[int, Message]] = []
        self.dropped: list[dict[str, Any]] = []
        self.round = 0
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
        size = cfg.clients_per_round
        forced = []
        if cfg.attackers_always_selected:
            forced = [a for a in cfg.attackers if is_attacking(cfg, a, server_round, self.phase)][:size]
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
        self.outgoing = list(zip(clients, messages))
        self.round = server_round
        return messages

    def screen(self, replies: Iterable[Message], check: Checker) -> list[tuple[int, Any]]:
        """(client, parsed payload) of every valid reply to the last messages sent.

        Replies that carry an error (the client raised or its worker died), fail
        their check, or never arrived are dropped, logged with client and node, and
        counted in ``dropped``; the caller goes on with the valid ones.
        """
        sent = {message.metadata.message_id: client for client, message in self.outgoing}
        answered: set[int] = set()
        valid = []
        for reply in replies:
            client = sent.get(reply.metadata.reply_to_message_id)
            node = reply.metadata.src_node_id
            if client is None or client in answered:
                self._drop("invalid", client, node, "unexpected or repeated reply")
                continue
            answered.add(client)
            if reply.has_error():
                lines = [line for line in reply.error.reason.splitlines() if line.strip()] or ["(no reason)"]
                self._drop("fault", client, node, f"client error: {lines[-1].strip()[:300]}")
                continue
            try:
                valid.append((client, check(reply.content)))
            except InvalidReply as exc:
                self._drop("invalid", client, node, str(exc))
        for client, message in self.outgoing:
            if client not in answered:
                self._drop("missing", client, message.metadata.dst_node_id,
                           f"no reply within {self.cfg.round_timeout:g}s")
        return sorted(valid, key=lambda item: item[0])  # arrival order must not change the sums

    def _drop(self, kind: str, client: int | None, node: int, reason: str) -> None:
        self.dropped.append({"phase": self.phase, "round": self.round, "client": client, "node": node,
                             "kind": kind, "reason": reason})
        print(f"[{self.phase}] round {self.round}: dropped reply of client {client} (node {node}): {reason}",
              flush=True)

    def drop_counts(self, server_round: int) -> dict[str, int]:
        """How many replies of a round were invalid, faulty or missing."""
        mine = [d for d in self.dropped if d["round"] == server_round and d["phase"] == self.phase]
        return {kind: sum(1 for d in mine if d["kind"] == kind) for kind in ("invalid", "fault", "missing")}

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
        """Average the valid replies into the new global model (None when too few are valid)."""
        if self._global is None:
            return None, MetricRecord({"replies": 0})
        valid = self.screen(replies, model_checker(self._global))
        if len(valid) < self.cfg.min_replies:
            return None, MetricRecord({"replies": len(valid)})
        arrays = average_update(self._global, [arrays for _, (arrays, _) in valid], self.eta)
        loss = float(np.mean([loss for _, (_, loss) in valid]))
        return arrays, MetricRecord({"replies": len(valid), "train-loss": loss})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean of the valid clients' local accuracies."""
        valid = self.screen(replies, evaluate_checker())
        if not valid:
            return None
        total = sum(n for _, (_, n) in valid)
        return MetricRecord({"accuracy": sum(acc * n for _, (acc, n) in valid) / max(total, 1),
                             "replies": len(valid)})
