"""Federated pruning (Sec. IV-A): clients rank (RAP) or vote (MVP), the server prunes in that order.

Pruning stops when clean accuracy drops more than pruning-max-drop, per step (Sec.
V-C) or below the unpruned model (cumulative).  The pruning curves of Fig. 5 are
drawn for both methods, for the report only.

The clients' query ``rank-neurons``: each client measures the layer's mean activations on
its clean data and replies with its ranking (RAP: rank 1 = most active) or its votes
(MVP: 1 = prune, exactly round(p * P) of them); the server checks and aggregates them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.app import RecordDict

from clients.behaviours import conduct_of
from clients.jobs import QUERIES, Request
from clients.local_training import client_model
from defenses.candidates import pruned
from defenses.neuron_ranking import (
    MAX_PRUNING_LEVELS,
    local_ranking,
    local_votes,
    mask_for,
    mean_activations,
    mvp_order,
    pruning_levels,
    rap_order,
    votes_to_prune,
)
from defenses.stop_rules import stop_at_drop
from fl_backdoor import protocol
from fl_backdoor.federation_data import client_data
from fl_backdoor.plots import plot_curves
from fl_backdoor.run_dir import write_csv
from fl_backdoor.settings import Setting
from fl_backdoor.training import pick_device
from server_strategies.reply_checks import Checker, InvalidReply, metrics_of

from . import CURVE_POINTS, PHASES, PRUNING_ACCURACY
from .candidates import client_accuracies

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

METHOD = Setting("pruning-method", "rap", "rap: aggregate ranks; mvp: majority votes.", "cleansing",
                 choices=("rap", "mvp"), added=False)
MVP_RATE = Setting("mvp-rate", 0.5, "p of MVP: each client votes to prune its p*P least active neurons.", "cleansing",
                   low=0.0, high=1.0, low_open=True, high_open=True, added=False)
MAX_DROP = Setting("pruning-max-drop", 0.01, "Pruning stops when validation accuracy drops more than this (see "
                                             "pruning-stop).", "cleansing", low=0.0, high=1.0, added=False)
STOP = Setting("pruning-stop", "per-step", "per-step: stop before the count whose accuracy drops more than "
                                           "pruning-max-drop below the previous count's (Sec. V-C); cumulative: "
                                           "below the unpruned model's.", "cleansing",
               choices=("per-step", "cumulative"), added=False)
RANK_NEURONS = "rank-neurons"


@QUERIES.register(RANK_NEURONS)
def rank_neurons(req: Request) -> dict[str, Any]:
    """The client's side: its ranking (RAP) or votes (MVP) of the layer's neurons."""
    cfg, method, layer = req.cfg, str(req.config["method"]), str(req.config["layer"])
    rate = protocol.number(req.config, "rate", float)
    model = client_model(cfg, req.state, req.mask)
    x, _ = client_data(cfg, req.client_id, pick_device(cfg.device))
    conduct = conduct_of(cfg, req.client_id)
    activations = conduct.activations(model, layer, x, mean_activations(model, layer, x, cfg.eval_batch_size))
    report = local_ranking(activations) if method == "rap" else local_votes(activations, rate)
    return {"ranking" if method == "rap" else "votes": conduct.neuron_report(method, report, rate)}


def ranking_checker(size: int) -> Checker:
    """A RAP reply: a permutation of the ranks 1..P."""
    def check(content: RecordDict) -> list[int]:
        ranking = metrics_of(content).get("ranking")
        if not isinstance(ranking, list) or sorted(ranking) != list(range(1, size + 1)):
            raise InvalidReply(f"ranking is not a permutation of 1..{size}")
        return [int(r) for r in ranking]
    return check


def votes_checker(size: int, rate: float) -> Checker:
    """An MVP reply: P votes of 0 or 1 with exactly round(p * P) ones."""
    ones = votes_to_prune(rate, size)

    def check(content: RecordDict) -> list[int]:
        votes = metrics_of(content).get("votes")
        if not isinstance(votes, list) or len(votes) != size or any(v not in (0, 1) for v in votes):
            raise InvalidReply(f"votes are not {size} values of 0 or 1")
        if sum(votes) != ones:
            raise InvalidReply(f"{int(sum(votes))} votes to prune, expected exactly {ones} (p={rate})")
        return [int(v) for v in votes]
    return check


def neuron_order(ctx: Cleansing, method: str) -> list[int]:
    """Aggregate the clients' rankings (RAP) or votes (MVP) into a pruning order."""
    rate = MVP_RATE.of(ctx.cfg)
    entries = {"layer": ctx.layer, "method": method, "rate": rate}
    check = ranking_checker(ctx.size) if method == "rap" else votes_checker(ctx.size, rate)
    reports = [report for _, report in ctx.query_clients(RANK_NEURONS, entries, check, f"{method.upper()} reports")]
    already = set(ctx.run.global_model.mask.pruned) if ctx.run.global_model.mask else set()
    order = rap_order(reports) if method == "rap" else mvp_order(reports)
    return [i for i in order if i not in already]


def levels(ctx: Cleansing, method: str, order: list[int], max_levels: int) -> list[int]:
    """Pruning levels to try: up to every MVP candidate, up to all but one neuron for RAP."""
    limit = len(order) if method == "mvp" else min(len(order), ctx.size - 1)
    return pruning_levels(limit, max_levels)


@PHASES.register("prune", settings=(METHOD, MVP_RATE, MAX_DROP, STOP))
def prune(ctx: Cleansing, result: str) -> None:
    """Rank or vote, then prune in aggregate order while clean accuracy stays above the threshold."""
    cfg, gm = ctx.cfg, ctx.run.global_model
    method, max_drop = METHOD.of(cfg), MAX_DROP.of(cfg)
    order = neuron_order(ctx, method)
    candidates = levels(ctx, method, order, MAX_PRUNING_LEVELS)
    accuracy_of: Callable[[int], float]
    if PRUNING_ACCURACY.of(cfg) == "server":
        def on_validation(count: int) -> float:
            with pruned(gm.model, order, count, ctx.layer, ctx.size):
                return ctx.validation_accuracy()
        accuracy_of = on_validation
    else:
        accuracy_of = dict(zip(candidates, client_accuracies(ctx, "pruning", candidates, order),
                               strict=True)).__getitem__
    base = accuracy_of(0)
    per_step = STOP.of(cfg) == "per-step"
    chosen, seen = stop_at_drop(candidates, accuracy_of, base, max_drop, per_step=per_step)
    chosen = chosen or 0
    reached = dict(seen).get(chosen, base)
    pruning_curves(ctx, order)
    gm.set_mask(mask_for(order, chosen, ctx.layer, ctx.size, gm.mask))
    ctx.finish(result, pruned=chosen, candidates=len(order), clean_accuracy=reached, clean_base=base,
               clean_threshold=(reached if per_step else base) - max_drop, stop=STOP.of(cfg),
               note=f"{method.upper()} pruned {chosen} of {ctx.size} neurons of {ctx.layer}")


def pruning_curves(ctx: Cleansing, order: list[int]) -> None:
    """Fig. 5 data: TA and AA against the number of pruned neurons, for RAP and for MVP (report only)."""
    points = CURVE_POINTS.of(ctx.cfg)
    if points <= 0:
        return
    started = time.perf_counter()
    gm = ctx.run.global_model
    rows: list[dict[str, Any]] = []
    orders = {METHOD.of(ctx.cfg): order}
    for method in ("rap", "mvp"):
        orders.setdefault(method, neuron_order(ctx, method))
    for method, method_order in orders.items():
        for count in levels(ctx, method, method_order, points):
            with pruned(gm.model, method_order, count, ctx.layer, ctx.size):
                rows.append({"method": method, "pruned": count, "validation": ctx.validation_accuracy(),
                             **ctx.run.evaluate()})
    write_csv(ctx.run.run_dir.path / "pruning_curve.csv", rows)
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for method in orders:
        mine = [r for r in rows if r["method"] == method]
        counts = [float(r["pruned"]) for r in mine]
        curves[f"TA {method.upper()}"] = (counts, [float(r["ta"]) for r in mine])
        curves[f"AA {method.upper()}"] = (counts, [float(r["aa"]) for r in mine])
    plot_curves(ctx.run.run_dir.path / "pruning_curve.png", curves, xlabel="pruned neurons",
                title=f"Federated pruning of {ctx.layer}")
    ctx.report_seconds += time.perf_counter() - started
