"""Messaging with the logical clients: one object sends every phase's messages and validates the replies.

Training, fine-tuning, evaluate rounds and the cleansing queries all go through
:meth:`Federation.ask`; phase, round and mask are arguments, never state set from
outside.  Client sampling is seeded per round, so a resumed run samples the same
clients as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fl_backdoor import protocol
from fl_backdoor.attacks import is_attacking
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.masks import NeuronMask
from server_strategies.reply_checks import Checker, InvalidReply

DROP_KINDS = ("invalid", "fault", "missing")
QUIET_WAIT_S = 60.0  # a wait longer than this reports the replies as they arrive (rounds take seconds; queries
#                      that run ANP or Neural Cleanse on every client take many minutes)


def wait_for_replies(grid: Grid, messages: list[Message], timeout: float,
                     report: Callable[[int, int, float], None], clock: Callable[[], float] = time.monotonic
                     ) -> list[Message]:
    """Grid.send_and_receive (push, then pull at the grid's interval until every reply is in or ``timeout``
    seconds pass), calling ``report(replies, messages, seconds)`` whenever replies arrive after QUIET_WAIT_S:
    written out here only to report progress, which the grid's own loop does not."""
    pending = set(grid.push_messages(messages))
    start = clock()
    replies: list[Message] = []
    while True:
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
        waited = clock() - start
        if arrived and waited > QUIET_WAIT_S:
            report(len(replies), len(messages), waited)
        if not pending or waited >= timeout:
            return replies
        time.sleep(getattr(grid, "pull_interval", 3.0))  # the in-memory grid's interval, or the deployment grid's


class Federation:
    """The clients of a run as the server sees them: who plays whom, what they answered, what was dropped."""

    def __init__(self, cfg: ExperimentConfig, grid: Grid, client_nodes: dict[int, int]) -> None:
        self.cfg = cfg
        self.grid = grid
        self.client_nodes = client_nodes
        self.dropped: list[dict[str, Any]] = []

    @property
    def everyone(self) -> list[int]:
        """All logical client ids."""
        return list(range(self.cfg.num_clients))

    def sample(self, server_round: int, phase: str) -> list[int]:
        """Clients of a round: all, or a seeded random fraction (attackers forced in when configured)."""
        cfg = self.cfg
        if cfg.fraction >= 1.0:
            return self.everyone
        rng = np.random.default_rng([cfg.seed, server_round, 0 if phase == "train" else 1])
        size = cfg.clients_per_round
        forced = []
        if cfg.attackers_always_selected:
            forced = [a for a in cfg.attackers if is_attacking(cfg, a, server_round, phase)][:size]
        others = [c for c in self.everyone if c not in forced]
        chosen = forced + [int(c) for c in rng.choice(others, size - len(forced), replace=False)]
        return sorted(chosen)

    def ask(self, clients: list[int], message_type: str, arrays: ArrayRecord, entries: dict[str, Any],
            server_round: int, phase: str, mask: NeuronMask | None, check: Checker) -> list[tuple[int, Any]]:
        """Send the model and ``entries`` to each client, wait for the replies, and return
        (client, parsed payload) of every valid one, ordered by client id."""
        run_config = protocol.config_record(self.cfg)
        messages = []
        for client in clients:
            config = ConfigRecord({**entries, "client-id": client, "server-round": server_round, "phase": phase,
                                   **protocol.mask_entries(mask)})
            content = RecordDict({protocol.ARRAYS: arrays, protocol.RUN_CONFIG: run_config, protocol.CONFIG: config})
            message = Message(content=content, dst_node_id=self.client_nodes[client], message_type=message_type)
            messages.append(message)
        def report(count: int, total: int, seconds: float) -> None:
            print(f"[{phase}] round {server_round}: {count} of {total} replies in {seconds:.0f} s", flush=True)

        replies = wait_for_replies(self.grid, messages, self.cfg.round_timeout, report)
        # the grid assigns message ids when it sends
        sent = {message.metadata.message_id: client for client, message in zip(clients, messages, strict=True)}
        return self.screen(replies, sent, check, server_round, phase)

    def screen(self, replies: Iterable[Message], sent: dict[str, int], check: Checker, server_round: int,
               phase: str) -> list[tuple[int, Any]]:
        """The valid replies to the messages ``sent`` (message id -> client).

        Replies that carry an error (the client raised or its worker died), fail
        their check, or never arrived are dropped, logged with client and node, and
        counted in ``dropped``; the caller goes on with the valid ones.
        """
        answered: set[int] = set()
        valid = []
        for reply in replies:
            client = sent.get(reply.metadata.reply_to_message_id)
            node = reply.metadata.src_node_id
            if client is None or client in answered:
                self._drop(phase, server_round, "invalid", client, node, "unexpected or repeated reply")
                continue
            answered.add(client)
            if reply.has_error():
                lines = [line for line in (reply.error.reason or "").splitlines() if line.strip()] or ["(no reason)"]
                if reply.error.code == ErrorCode.NODE_UNAVAILABLE:  # the SuperLink lost the node's heartbeat
                    self._drop(phase, server_round, "missing", client, node, f"node unavailable: {lines[-1].strip()}")
                else:
                    self._drop(phase, server_round, "fault", client, node, f"client error: {lines[-1].strip()[:300]}")
                continue
            try:
                valid.append((client, check(reply.content)))
            except InvalidReply as exc:
                self._drop(phase, server_round, "invalid", client, node, str(exc))
        for client in sorted(set(sent.values()) - answered):
            self._drop(phase, server_round, "missing", client, self.client_nodes[client],
                       f"no reply within {self.cfg.round_timeout:g}s")
        return sorted(valid, key=lambda item: item[0])  # arrival order must not change the sums

    def refuse(self, phase: str, server_round: int, client: int, reason: str) -> None:
        """Drop a reply that passed ``screen`` but that the server refuses later, as an invalid one."""
        self._drop(phase, server_round, "invalid", client, self.client_nodes[client], reason)

    def _drop(self, phase: str, server_round: int, kind: str, client: int | None, node: int, reason: str) -> None:
        self.dropped.append({"phase": phase, "round": server_round, "client": client, "node": node,
                             "kind": kind, "reason": reason})
        print(f"[{phase}] round {server_round}: dropped reply of client {client} (node {node}): {reason}",
              flush=True)

    def drop_counts(self, server_round: int, phase: str) -> dict[str, int]:
        """How many replies of a round were invalid, faulty or missing."""
        mine = [d for d in self.dropped if d["round"] == server_round and d["phase"] == phase]
        return {kind: sum(1 for d in mine if d["kind"] == kind) for kind in DROP_KINDS}
