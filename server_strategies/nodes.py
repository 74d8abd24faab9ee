"""Find the SuperNodes of the federation and decide which node plays which client."""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fl_backdoor import protocol
from fl_backdoor.errors import UserError


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 120.0, settle: float = 3.0) -> list[int]:
    """Node ids once ``expected`` nodes registered, or once the count stopped growing.

    ``grid.get_node_ids()`` does not wait for nodes to register, so poll.
    """
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        ids = sorted(grid.get_node_ids())
        if len(ids) != len(seen):
            seen, last_change = ids, time.monotonic()
        if len(seen) >= expected or (seen and time.monotonic() - last_change > settle):
            return seen
        time.sleep(0.1)
    if not seen:
        raise UserError(f"no SuperNode connected within {timeout:.0f}s (is the federation's SuperLink the one "
                        f"the SuperNodes connect to?)")
    return seen


def map_clients_to_nodes(grid: Grid, num_clients: int, timeout: float = 120.0) -> dict[int, int]:
    """client id -> node id.

    Each node reports its partition id.  When the federation has a node for every
    client, client c is the node with partition id c (Flower's convention).  With
    fewer nodes (``flwr run`` starts 2 by default), nodes play several clients in
    turn: client c runs on the node of partition c mod (number of nodes).
    """
    nodes = wait_for_nodes(grid, num_clients, timeout)
    queries = [Message(RecordDict({protocol.CONFIG: ConfigRecord({"purpose": "describe"})}),
                       dst_node_id=n, message_type=protocol.DESCRIBE) for n in nodes]
    partition: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if not reply.has_error():
            metrics = reply.content.metric_records[protocol.METRICS]
            partition[reply.metadata.src_node_id] = protocol.number(metrics, "partition-id", int)
    if not partition:
        raise UserError(f"none of the {len(nodes)} SuperNodes answered the describe query within {timeout:.0f}s")
    return assign_clients(partition, num_clients)


def assign_clients(partition: dict[int, int], num_clients: int) -> dict[int, int]:
    """client id -> node id, from each node's reported partition id (node id -> partition id).

    Client c goes to the node with partition id c when every client has one; otherwise
    the nodes are ordered by partition id (by node id where partition ids are missing,
    -1, or repeated) and client c goes to node c mod (number of nodes).
    """
    by_partition = {p: n for n, p in partition.items()}
    distinct = len(by_partition) == len(partition) and -1 not in by_partition
    if distinct and all(c in by_partition for c in range(num_clients)):
        return {c: by_partition[c] for c in range(num_clients)}
    if distinct:
        ordered = [by_partition[p] for p in sorted(by_partition)]
    else:
        ordered = sorted(partition)
        print(f"note: SuperNodes without distinct partition ids ({sorted(partition.values())}); "
              f"clients are assigned in node-id order (start each with --node-config \"partition-id=i\")",
              flush=True)
    if len(ordered) < num_clients:
        print(f"note: the federation has {len(ordered)} SuperNodes for {num_clients} clients; "
              f"each node plays ~{-(-num_clients // len(ordered))} clients in turn "
              f"(flwr run: --federation-config \"num-supernodes={num_clients}\" gives one node per client)",
              flush=True)
    return {c: ordered[c % len(ordered)] for c in range(num_clients)}
