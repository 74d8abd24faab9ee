"""Federated pruning (Sec. IV-A): clients rank (RAP) or vote (MVP), the server prunes in that order.

Pruning stops when clean accuracy drops more than pruning-max-drop, per step (Sec.
V-C) or below the unpruned model (cumulative).  The pruning curves of Fig. 5 are
drawn for both methods, for the report only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from defenses.candidates import pruned
from defenses.neuron_ranking import MAX_PRUNING_LEVELS, mask_for
from defenses.stop_rules import stop_at_drop
from fl_backdoor.plots import plot_curves
from fl_backdoor.run_dir import write_csv

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing


@PHASES.register("prune")
def prune(ctx: Cleansing, result: str) -> None:
    """Rank or vote, then prune in aggregate order while clean accuracy stays above the threshold."""
    cfg, gm = ctx.cfg, ctx.run.global_model
    order = ctx.neuron_order(cfg.pruning_method)
    levels = ctx.levels(cfg.pruning_method, order, MAX_PRUNING_LEVELS)
    accuracy_of: Callable[[int], float]
    if cfg.pruning_accuracy == "server":
        def on_validation(count: int) -> float:
            with pruned(gm.model, order, count, ctx.layer, ctx.size):
                return ctx.validation_accuracy()
        accuracy_of = on_validation
    else:
        accuracy_of = dict(zip(levels, ctx.client_accuracies("pruning", levels, order), strict=True)).__getitem__
    base = accuracy_of(0)
    per_step = cfg.pruning_stop == "per-step"
    chosen, seen = stop_at_drop(levels, accuracy_of, base, cfg.pruning_max_drop, per_step=per_step)
    chosen = chosen or 0
    reached = dict(seen).get(chosen, base)
    pruning_curves(ctx, order)
    gm.set_mask(mask_for(order, chosen, ctx.layer, ctx.size, gm.mask))
    ctx.finish(result, pruned=chosen, candidates=len(order), clean_accuracy=reached, clean_base=base,
               clean_threshold=(reached if per_step else base) - cfg.pruning_max_drop, stop=cfg.pruning_stop,
               note=f"{cfg.pruning_method.upper()} pruned {chosen} of {ctx.size} neurons of {ctx.layer}")


def pruning_curves(ctx: Cleansing, order: list[int]) -> None:
    """Fig. 5 data: TA and AA against the number of pruned neurons, for RAP and for MVP (report only)."""
    if ctx.cfg.curve_points <= 0:
        return
    started = time.perf_counter()
    gm = ctx.run.global_model
    rows: list[dict[str, Any]] = []
    orders = {ctx.cfg.pruning_method: order}
    for method in ("rap", "mvp"):
        orders.setdefault(method, ctx.neuron_order(method))
    for method, method_order in orders.items():
        for count in ctx.levels(method, method_order, ctx.cfg.curve_points):
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
