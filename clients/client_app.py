"""The Flower ClientApp: a benign client or a backdoor attacker, by client id and run config.

The node plays the logical client named by ``client-id`` in each message (the
server maps clients to nodes by partition id), using the run config the message
carries.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.cleansing_jobs import candidate_report, neuron_report
from clients.local_training import local_accuracy, run_local_job
from fl_backdoor import protocol

app = ClientApp()


def _one_thread() -> None:
    # each simulated client owns one CPU; more torch threads would oversubscribe the cores
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Report this node's partition id, so the server can map clients to nodes."""
    node = context.node_config
    metrics = MetricRecord({"partition-id": int(node.get("partition-id", -1)),
                            "num-partitions": int(node.get("num-partitions", 0))})
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training (benign or poisoned) of the received global model."""
    _one_thread()
    cfg = protocol.read_config(msg.content[protocol.RUN_CONFIG])
    config = msg.content[protocol.CONFIG]
    global_state = msg.content[protocol.ARRAYS].to_torch_state_dict()
    result = run_local_job(cfg, int(config["client-id"]), global_state, int(config["server-round"]),
                           str(config.get("phase", "train")), protocol.read_mask(config))
    metrics = MetricRecord({"num-examples": result.stats.num_examples, "train-loss": result.stats.loss})
    return Message(RecordDict({protocol.ARRAYS: ArrayRecord(result.state),
                               protocol.METRICS: metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the received model on this client's local data."""
    _one_thread()
    cfg = protocol.read_config(msg.content[protocol.RUN_CONFIG])
    config = msg.content[protocol.CONFIG]
    correct, total = local_accuracy(cfg, int(config["client-id"]), msg.content[protocol.ARRAYS].to_torch_state_dict(),
                                    protocol.read_mask(config))
    metrics = MetricRecord({"num-examples": total, "accuracy": correct / max(total, 1)})
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)


@app.query("rank_neurons")
def rank_neurons(msg: Message, context: Context) -> Message:
    """Federated pruning: this client's ranking (RAP) or votes (MVP) of the layer's neurons."""
    _one_thread()
    cfg = protocol.read_config(msg.content[protocol.RUN_CONFIG])
    config = msg.content[protocol.CONFIG]
    report = neuron_report(cfg, int(config["client-id"]), msg.content[protocol.ARRAYS].to_torch_state_dict(),
                           protocol.read_mask(config), str(config["layer"]), str(config["method"]),
                           float(config["rate"]))
    key = "ranking" if config["method"] == "rap" else "votes"
    return Message(RecordDict({protocol.METRICS: MetricRecord({key: report})}), reply_to=msg)


@app.query("candidate_accuracy")
def candidate_accuracy(msg: Message, context: Context) -> Message:
    """Local clean accuracy of candidate pruning levels or AW Deltas."""
    _one_thread()
    cfg = protocol.read_config(msg.content[protocol.RUN_CONFIG])
    config = msg.content[protocol.CONFIG]
    accs, examples = candidate_report(cfg, int(config["client-id"]),
                                      msg.content[protocol.ARRAYS].to_torch_state_dict(), protocol.read_mask(config),
                                      str(config["kind"]), str(config["layer"]), list(config.get("order", [])),
                                      list(config["candidates"]))
    metrics = MetricRecord({"accuracies": accs, "num-examples": examples})
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)
