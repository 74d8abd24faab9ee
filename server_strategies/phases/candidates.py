"""The clients' clean accuracy of candidate models: the query prune and aw share (``pruning-accuracy = clients``),
and federated ANP's.

The server sends the model with a list of candidates: pruning levels (kind ``pruning``:
the first ``c`` neurons of ``order`` silenced), AW Deltas (kind ``aw``) or ANP pruning
levels (kind ``anp``: the first ``c`` neurons of ``order``, over every hidden layer, zeroed).  Each client
replies with its local accuracy for every candidate and its example count; the server
averages them by example count, each capped at the client's partition size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import RecordDict

from clients.behaviours import conduct_of
from clients.jobs import QUERIES, Request
from clients.local_training import client_model
from defenses.anp import anp_accuracies, neuron_units
from defenses.candidates import aw_accuracies, candidate_measure, pruning_accuracies
from defenses.extreme_weights import weight_stats
from fl_backdoor import protocol
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.masks import NeuronMask, mask_on, neuron_output_name
from fl_backdoor.models import layer_neurons
from fl_backdoor.training import accuracy, layer_weight, pick_device
from server_strategies.reply_checks import Checker, metrics_of, num_examples, unit_values

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

CANDIDATE_ACCURACY = "candidate-accuracy"


def candidate_report(cfg: ExperimentConfig, client_id: int, state: dict[str, torch.Tensor],
                     mask: NeuronMask | None, kind: str, layer: str, order: Sequence[int],
                     candidates: Sequence[float]) -> tuple[list[float], int]:
    """Local clean accuracy of each candidate: pruning levels (kind 'pruning'), Deltas (kind 'aw') or ANP pruning
    levels (kind 'anp': the first ``c`` neurons of ``order`` over every hidden layer; ``layer`` is not used)."""
    model = client_model(cfg, state, mask)
    x, y = client_data(cfg, client_id, pick_device(cfg.device))
    if kind == "anp":  # ANP's neurons of every hidden layer: the whole model runs for each candidate
        accs = anp_accuracies(model, neuron_units(model, x), list(order), [int(c) for c in candidates],
                              lambda m: accuracy(m, x, y, cfg.eval_batch_size))
        return conduct_of(cfg, client_id).candidate_accuracies(accs), int(y.shape[0])
    # pruning silences the layer's neuron outputs; AW changes the layer's weights
    changed = neuron_output_name(model, layer) if kind == "pruning" else layer
    measure = candidate_measure(model, x, y, cfg.eval_batch_size, changed)
    if kind == "pruning":
        accs = pruning_accuracies(model, list(order), [int(c) for c in candidates], layer,
                                  layer_neurons(model, layer), measure)
    else:
        weight = layer_weight(model, layer)
        stats = weight_stats(weight, mask_on(mask, layer), str(cfg.value("aw-stats")))
        accs = aw_accuracies(model, layer, stats, list(candidates), measure)
    return conduct_of(cfg, client_id).candidate_accuracies(accs), int(y.shape[0])


@QUERIES.register(CANDIDATE_ACCURACY)
def candidate_accuracy(req: Request) -> dict[str, Any]:
    """The client's side: its accuracy for every candidate of the message, and its example count."""
    accs, examples = candidate_report(req.cfg, req.client_id, req.state, req.mask, str(req.config["kind"]),
                                      str(req.config["layer"]), protocol.numbers(req.config, "order", int),
                                      protocol.numbers(req.config, "candidates", float))
    return {"accuracies": accs, "num-examples": examples}


def accuracies_checker(count: int) -> Checker:
    """A candidate-accuracy reply: ``count`` accuracies in [0, 1] and an example count."""
    def check(content: RecordDict) -> tuple[list[float], int]:
        metrics = metrics_of(content)
        return unit_values(metrics, "accuracies", count), num_examples(metrics)
    return check


def client_reports(ctx: Cleansing, kind: str, candidates: Sequence[float], order: Sequence[int] = ()
                   ) -> list[tuple[int, tuple[list[float], int]]]:
    """One federated round: (client, (its accuracy per candidate, its example count)) of every valid reply."""
    entries: dict[str, Any] = {"kind": kind, "layer": {"pruning": ctx.layer, "aw": ctx.aw_layer}.get(kind, ""),
                               "candidates": [float(c) for c in candidates]}
    if order:
        entries["order"] = [int(i) for i in order]
    return ctx.query_clients(CANDIDATE_ACCURACY, entries, accuracies_checker(len(candidates)), "candidate accuracies")


def client_accuracies(ctx: Cleansing, kind: str, candidates: Sequence[float], order: Sequence[int] = ()
                      ) -> list[float]:
    """One federated round: every client's accuracy per candidate, averaged by example count."""
    reports = client_reports(ctx, kind, candidates, order)
    return [float(a) for a in ctx.weighted_mean([(c, accs, n) for c, (accs, n) in reports])]
