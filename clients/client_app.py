"""The Flower ClientApp: a benign client or a backdoor attacker, by client id and run config.

The node plays the logical client named by ``client-id`` in each message (the
server maps clients to nodes by partition id), using the run config the message
carries.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.jobs import Request, answer
from clients.local_training import local_accuracy, run_local_job
from fl_backdoor import protocol
from fl_backdoor.allocator import keep_freed_memory

app = ClientApp()


def unpack(msg: Message) -> Request:
    """Parse a message's run config, per-message config, model and mask (one torch thread from here on,
    freed memory kept in the process: fl_backdoor.allocator)."""
    # each simulated client owns one CPU; more torch threads would oversubscribe the cores
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    keep_freed_memory()
    config = msg.content.config_records[protocol.CONFIG]
    return Request(protocol.read_config(msg.content.config_records[protocol.RUN_CONFIG]), config,
                   protocol.number(config, "client-id", int),
                   msg.content.array_records[protocol.ARRAYS].to_torch_state_dict(), protocol.read_mask(config))


def reply(msg: Message, metrics: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> Message:
    """A reply with a MetricRecord and, for training, the model."""
    content = RecordDict({protocol.METRICS: MetricRecord(metrics)})
    if state is not None:
        content[protocol.ARRAYS] = ArrayRecord(state)
    return Message(content, reply_to=msg)


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Report this node's partition id, so the server can map clients to nodes."""
    node = context.node_config
    return reply(msg, {"partition-id": int(node.get("partition-id", -1)),
                       "num-partitions": int(node.get("num-partitions", 0))})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training (benign or poisoned) of the received global model, in a phase's training variant if named."""
    req = unpack(msg)
    key = f"client-memory-{req.client_id}"  # a node may play several logical clients
    memory = context.state.array_records[key].to_torch_state_dict() if key in context.state.array_records else {}
    result = run_local_job(req.cfg, req.client_id, req.state, req.server_round,
                           str(req.config.get("phase", "train")), req.mask, memory,
                           training=str(req.config.get(protocol.TRAINING, "")), entries=req.config)
    if memory:
        context.state[key] = ArrayRecord(memory)
    return reply(msg, {"num-examples": result.stats.num_examples, "train-loss": result.stats.loss}, result.state)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the received model on this client's local data."""
    req = unpack(msg)
    correct, total = local_accuracy(req.cfg, req.client_id, req.state, req.mask)
    return reply(msg, {"num-examples": total, "accuracy": correct / max(total, 1)})


@app.query("phase")
def phase_query(msg: Message, context: Context) -> Message:
    """A defense phase's query (clients/jobs.py): the registered job the message names, on local data."""
    return reply(msg, answer(unpack(msg)))
