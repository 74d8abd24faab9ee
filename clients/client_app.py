"""The Flower ClientApp: a benign client or a backdoor attacker, by client id and run config.

The node plays the logical client named by ``client-id`` in each message (the
server maps clients to nodes by partition id), using the run config the message
carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.cleansing_jobs import candidate_report, neuron_report, rnp_report
from clients.local_training import local_accuracy, run_local_job
from fl_backdoor import protocol
from fl_backdoor.allocator import keep_freed_memory
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.masks import NeuronMask

app = ClientApp()


@dataclass(frozen=True)
class Request:
    """What every train, evaluate and query message carries."""

    cfg: ExperimentConfig
    config: ConfigRecord
    client_id: int
    state: dict[str, torch.Tensor]
    mask: NeuronMask | None


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
    """Local training (benign or poisoned) of the received global model."""
    req = unpack(msg)
    key = f"client-memory-{req.client_id}"  # a node may play several logical clients
    memory = context.state.array_records[key].to_torch_state_dict() if key in context.state.array_records else {}
    result = run_local_job(req.cfg, req.client_id, req.state, protocol.number(req.config, "server-round", int),
                           str(req.config.get("phase", "train")), req.mask, memory,
                           sharpness_aware=bool(req.config.get("sharpness-aware", False)),
                           unlearning=str(req.config.get("unlearning", "")))
    if memory:
        context.state[key] = ArrayRecord(memory)
    return reply(msg, {"num-examples": result.stats.num_examples, "train-loss": result.stats.loss}, result.state)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the received model on this client's local data."""
    req = unpack(msg)
    correct, total = local_accuracy(req.cfg, req.client_id, req.state, req.mask)
    return reply(msg, {"num-examples": total, "accuracy": correct / max(total, 1)})


@app.query("rank_neurons")
def rank_neurons(msg: Message, context: Context) -> Message:
    """Federated pruning: this client's ranking (RAP) or votes (MVP) of the layer's neurons."""
    req = unpack(msg)
    method = str(req.config["method"])
    report = neuron_report(req.cfg, req.client_id, req.state, req.mask, str(req.config["layer"]), method,
                           protocol.number(req.config, "rate", float))
    return reply(msg, {"ranking" if method == "rap" else "votes": report})


@app.query("candidate_accuracy")
def candidate_accuracy(msg: Message, context: Context) -> Message:
    """Local clean accuracy of candidate pruning levels or AW Deltas."""
    req = unpack(msg)
    accs, examples = candidate_report(req.cfg, req.client_id, req.state, req.mask, str(req.config["kind"]),
                                      str(req.config["layer"]), protocol.numbers(req.config, "order", int),
                                      protocol.numbers(req.config, "candidates", float))
    return reply(msg, {"accuracies": accs, "num-examples": examples})


@app.query("rnp_masks")
def rnp_masks(msg: Message, context: Context) -> Message:
    """Federated RNP: channel masks recovered on this client's data after unlearning it."""
    req = unpack(msg)
    masks, examples, epochs, accuracy = rnp_report(req.cfg, req.client_id, req.state, req.mask,
                                                   protocol.number(req.config, "server-round", int))
    return reply(msg, {"masks": masks, "num-examples": examples, "unlearning-epochs": epochs,
                       "unlearned-accuracy": accuracy})
