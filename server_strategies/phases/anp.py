"""ANP (defenses/anp.py) as cleansing phases: federated (``anp``) and on the server's validation set (``anp-server``).

Federated: two query rounds.  In the first (query ``anp-masks``) every client runs ANP's
min-max mask optimisation on a copy of the global model with its own clean data
(Algorithm 1 with the reference settings of defenses/anp.py, ``anp-iterations`` mask
updates) and replies with one mask value in [0, 1] per hidden neuron, nothing else: no
data, no model, no example count.  The server combines the masks coordinate by coordinate
with a rule a minority of liars cannot steer (``anp-aggregation``): the median, or the mean
after cutting ``anp-trim`` of the clients from each end.  A mean weighted by self-reported
example counts is never used: one attacker claiming more data would decide every mask.
With ``anp-rounds`` above 1 the optimisation itself is federated: the query is repeated,
every client starting from the masks the server combined in the round before, with the
same total of mask updates split over the rounds.  Masks a client optimises on its own
data alone depend on the labels it holds: on the 9-pixel setting's 9 -> 0 model (3 labels
a client), ANP on the server's 600 images cut to 3 labels correlates at 0.13-0.24 with ANP
on all 600, where two seeds on all 600 correlate at 0.97; 10 rounds of 200 updates moved the
combined masks' correlation with the server's only from 0.39 to 0.42
(docs/defenses/post-training.md).

Both phases then prune the smallest-mask neurons (their weight or batch-norm scale zeroed,
as ANP prunes) by clean-data candidates within ``clean-budget``: the strongest candidate is
the paper's rule, every neuron whose mask is at most ``anp-threshold`` (``anp-pruning =
threshold``), or every neuron but one (``anp-pruning = budget``); the weaker ones prune
fewer smallest-mask neurons, down to none, the unchanged model.  The federated phase has
the server measure the candidates on its validation set, as ``anp-server`` does, or, with
``pruning-accuracy = clients``, the clients (the candidate-accuracy query, kind ``anp``; one
more round; the clients' drops from the unpruned model are combined by their median, so a
minority cannot veto or wave through a candidate, but with label-skewed clients the median
client does not see damage confined to labels a minority of clients hold: on the 9-pixel
setting's 9 -> 0 model it passed 73 neurons whose pruning cost 12 points of validation
accuracy, and the guard handed back the trained model).
The first candidate, strongest first, whose clean accuracy is within the budget of the
unpruned model's (measured the same way) is applied.  Later phases that train (fine-tuning)
may move the zeroed weights again: ANP's pruning is not a persistent neuron mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import RecordDict

from clients.jobs import QUERIES, Request
from clients.local_training import client_model, job_generator
from defenses.anp import (
    AdversarialNeuronPruning,
    ANPSettings,
    NeuronUnit,
    anp_accuracies,
    anp_masks,
    apply_pruning,
    flatten_masks,
    neuron_units,
    prune_first,
    smallest_first,
    split_masks,
)
from defenses.budget import Budget, strongest_within
from defenses.neuron_ranking import pruning_levels
from fl_backdoor import protocol
from fl_backdoor.federation_data import client_data
from fl_backdoor.settings import Setting
from fl_backdoor.training import pick_device
from server_strategies.reply_checks import Checker, metrics_of, unit_values

from . import CLEAN_BUDGET, PHASES, PRUNING_ACCURACY
from .candidates import client_reports

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

ITERATIONS = Setting("anp-iterations", 2000, "anp, anp-server: ANP mask updates (batches of 128) per client or on the "
                                             "validation set (the paper's 2,000).", "cleansing", low=1)
THRESHOLD = Setting("anp-threshold", 0.2, "anp, anp-server: with anp-pruning = threshold, prune the neurons whose "
                                          "mask is at most this (the paper's 0.2).", "cleansing", low=0.0, high=1.0)
PRUNING = Setting("anp-pruning", "threshold", "anp, anp-server: the strongest pruning candidate: the paper's "
                                              "threshold rule, or every neuron but one (budget); weaker candidates "
                                              "prune fewer smallest-mask neurons, and the strongest within "
                                              "clean-budget is applied.", "cleansing", choices=("threshold", "budget"))
AGGREGATION = Setting("anp-aggregation", "median", "anp: how the server combines the clients' masks, coordinate by "
                                                   "coordinate: median, or trimmed-mean (anp-trim of the clients cut "
                                                   "from each end).", "cleansing",
                      choices=("median", "trimmed-mean"))
TRIM = Setting("anp-trim", 0.2, "anp with anp-aggregation = trimmed-mean: the share of clients cut from each end of "
                                "every coordinate (rounded down to whole clients).", "cleansing",
               low=0.0, high=0.5, high_open=True)
ROUNDS = Setting("anp-rounds", 1, "anp: rounds of federated mask optimisation; in each, every client runs "
                                  "anp-iterations / anp-rounds mask updates (rounded up) from the masks the server "
                                  "combined in the round before (all 1 in the first), and the server combines the "
                                  "replies by anp-aggregation. 1: every client's masks come from its own data alone.",
                 "cleansing", low=1)
ANP_MASKS = "anp-masks"
START = "anp-start"  # the query's entry: the combined masks a round starts from (absent in the first)
ROUND = "anp-round"  # the query's entry: the round (0, 1, ...), for a fresh shuffle and fresh noise in each


@QUERIES.register(ANP_MASKS)
def anp_report(req: Request) -> dict[str, Any]:
    """The client's side: ANP's masks optimised on its own clean data, one per hidden neuron."""
    cfg = req.cfg
    model = client_model(cfg, req.state, req.mask)
    x, y = client_data(cfg, req.client_id, pick_device(cfg.device))
    units = neuron_units(model, x)
    start = None
    if START in req.config:  # the same check as the server's on a reply: one mask in [0, 1] per neuron
        start = split_masks(units, torch.tensor(unit_values(req.config, START, sum(u.size for u in units))))
    generator = job_generator(cfg, req.client_id, req.server_round, "cleanse")
    later = protocol.number(req.config, ROUND, int) if ROUND in req.config else 0
    generator.manual_seed(generator.initial_seed() + later)
    iterations = math.ceil(ITERATIONS.of(cfg) / ROUNDS.of(cfg))
    masks = AdversarialNeuronPruning(model, units, ANPSettings(iterations=iterations), start).fit(x, y, generator)
    return {"masks": flatten_masks(masks).tolist()}


def masks_checker(count: int) -> Checker:
    """A federated ANP reply: ``count`` masks in [0, 1]."""
    def check(content: RecordDict) -> list[float]:
        return unit_values(metrics_of(content), "masks", count)
    return check


def aggregate_masks(replies: Sequence[Sequence[float]], rule: str, trim: float = 0.0) -> np.ndarray:
    """The clients' masks combined per neuron: the median (of an even count, the mean of the middle two), or the mean
    after cutting floor(trim * clients) values from each end; every client counts once."""
    values = np.asarray(replies, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError("aggregate_masks: one row of masks per client, at least one client")
    if rule == "median":
        return np.median(values, axis=0)
    if rule == "trimmed-mean":
        from scipy.stats import trim_mean  # scipy's cut is floor(trim * n) per end, as documented above

        return np.asarray(trim_mean(values, trim, axis=0), dtype=np.float64)
    raise ValueError(f"aggregate_masks: unknown rule '{rule}'")


def median_drop_accuracies(replies: Sequence[Sequence[float]]) -> list[float]:
    """The candidates' clean accuracies as the budget reads them, from every client's accuracies (the last candidate
    is the unchanged model): the clients' median accuracy of the unchanged model minus, per candidate, the median
    of the clients' own drops from it.  A minority of clients reporting any accuracies cannot move a drop outside
    the honest clients' range, where an average would let them veto or wave through every candidate."""
    values = np.asarray(replies, dtype=np.float64)
    drops = values[:, -1:] - values
    return [float(a) for a in np.median(values[:, -1]) - np.median(drops, axis=0)]


def candidate_counts(masks: np.ndarray, pruning: str, threshold: float) -> list[int]:
    """Numbers of smallest-mask neurons to prune, strongest first, down to 0 (the unchanged model): from every
    neuron whose mask is at most ``threshold`` (threshold) or every neuron but one (budget)."""
    strongest = int((masks <= threshold).sum()) if pruning == "threshold" else max(masks.size - 1, 0)
    return pruning_levels(strongest)[::-1]


def prune_within_budget(ctx: Cleansing, result: str, units: list[NeuronUnit], masks: dict[str, torch.Tensor],
                        accuracies: Callable[[list[int], list[int]], list[float]], where: str,
                        **facts: Any) -> None:
    """Prune the global model by the strongest candidate within clean-budget (``accuracies`` measures the
    candidates: the neuron order and the counts) and record the phase."""
    cfg, model = ctx.cfg, ctx.run.global_model.model
    flat = flatten_masks(masks).numpy()
    counts = candidate_counts(flat, PRUNING.of(cfg), THRESHOLD.of(cfg))
    order = smallest_first(masks)
    chosen, tried, record = 0, [], None
    if counts[0]:  # the unchanged model (count 0) is measured with the rest, the same way
        measured = dict(zip(counts, accuracies(order[:counts[0]], counts), strict=True))
        budget = Budget(measured[0], CLEAN_BUDGET.of(cfg))
        chosen = strongest_within(counts[:-1], measured.__getitem__, budget)[0] or 0
        tried = [[c, a] for c, a in measured.items()]
        record = budget.record(measured[chosen], measured_on=where)
    pruned = prune_first(masks, order, chosen)
    apply_pruning(model, units, pruned)
    reason = None if chosen else ("no neuron's mask is at most the threshold" if not counts[0] else
                                  f"pruning even {counts[-2]} neuron(s) costs more clean accuracy ({where}) than the "
                                  f"budget {CLEAN_BUDGET.of(cfg):g}")
    ctx.finish(result, **facts, anp_neurons=int(flat.size), anp_pruned=chosen,
               anp_pruned_layers={k: int(v.sum()) for k, v in pruned.items() if int(v.sum())},
               anp_strongest=counts[0], anp_tried=tried,
               mask_median=float(np.median(flat)), masks_at_threshold=int((flat <= THRESHOLD.of(cfg)).sum()),
               anp_masks=[round(float(m), 4) for m in flat],  # in neuron_units order: other cuts, offline
               pruning=PRUNING.of(cfg), threshold=THRESHOLD.of(cfg), unchanged=reason,
               budget=record,
               note=f"ANP ({where}): " + (f"nothing pruned ({reason})" if reason else
                                          f"pruned {chosen} of {flat.size} neurons (the candidates' strongest: "
                                          f"{counts[0]})"))


@PHASES.register("anp", settings=(ITERATIONS, THRESHOLD, PRUNING, AGGREGATION, TRIM, ROUNDS))
def anp_federated(ctx: Cleansing, result: str) -> None:
    """Every client optimises ANP's masks on its data; the server combines them robustly and prunes the strongest
    candidate within the budget (measured on the validation set, or by the clients with pruning-accuracy=clients)."""
    model = ctx.run.global_model.model
    units = neuron_units(model, ctx.val_x)
    count = sum(u.size for u in units)
    rule, rounds = AGGREGATION.of(ctx.cfg), ROUNDS.of(ctx.cfg)
    entries: dict[str, Any] = {}
    for r in range(rounds):
        answered: list[tuple[int, list[float]]] = ctx.query_clients(ANP_MASKS, entries, masks_checker(count),
                                                                    "ANP masks")
        combined = aggregate_masks([m for _, m in answered], rule, TRIM.of(ctx.cfg))
        entries = {START: combined.tolist(), ROUND: r + 1}
        if rounds > 1:  # a round takes minutes on a CPU
            print(f"[{result}] ANP masks, round {r + 1} of {rounds}: {len(answered)} clients, "
                  f"{int((combined <= THRESHOLD.of(ctx.cfg)).sum())} masks at most the threshold", flush=True)
    masks = split_masks(units, torch.from_numpy(combined).float())

    on_clients = PRUNING_ACCURACY.of(ctx.cfg) == "clients"

    def accuracies(order: list[int], counts: list[int]) -> list[float]:
        if on_clients:
            return median_drop_accuracies([accs for _, (accs, _) in client_reports(ctx, "anp", counts, order)])
        return anp_accuracies(model, units, order, counts, lambda m: ctx.validation_accuracy())

    prune_within_budget(ctx, result, units, masks, accuracies,
                        "the clients' data" if on_clients else "the validation set", clients=len(answered),
                        aggregation=rule, reply_values=count, anp_rounds=rounds,
                        # each client's reply, for diagnosing disagreement (label skew) and other rules offline
                        client_masks={str(cid): [round(float(v), 4) for v in m] for cid, m in answered})


@PHASES.register("anp-server", settings=(ITERATIONS, THRESHOLD, PRUNING))
def anp_server(ctx: Cleansing, result: str) -> None:
    """ANP's masks optimised on the server's validation set, pruned within the budget by its accuracy."""
    model = ctx.run.global_model.model
    units, masks = anp_masks(model, ctx.val_x, ctx.val_y, ANPSettings(iterations=ITERATIONS.of(ctx.cfg)),
                             torch.Generator().manual_seed(ctx.cfg.seed))

    def accuracies(order: list[int], counts: list[int]) -> list[float]:
        return anp_accuracies(model, units, order, counts, lambda m: ctx.validation_accuracy())

    prune_within_budget(ctx, result, units, masks, accuracies, "the validation set")
