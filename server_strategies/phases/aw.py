"""Adjusting extreme weights (Sec. IV-C): zero the last conv layer's weights outside mu +/- Delta*sigma.

Delta is fixed (aw-delta) or shrunk from aw-delta-start until clean accuracy drops
more than aw-max-drop.  The Delta curve of Fig. 6 is drawn for the report only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from defenses.candidates import extreme_weights_zeroed
from defenses.extreme_weights import WeightStats, delta_schedule, weight_stats, zero_extreme_weights
from defenses.stop_rules import stop_at_drop
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.masks import mask_on
from fl_backdoor.plots import plot_curves
from fl_backdoor.run_dir import write_csv
from fl_backdoor.settings import Rule, Setting
from fl_backdoor.training import layer_weight

from . import CURVE_POINTS, PHASES, PRUNING_ACCURACY
from .candidates import client_accuracies

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

DELTA = Setting("aw-delta", 0.0, "Fixed AW threshold Delta (the paper's fixed value is 3); 0 = adaptive search.",
                "cleansing", low=0.0, added=False)
START = Setting("aw-delta-start", 10.0, "Adaptive AW: first Delta.", "cleansing", low=0.0, low_open=True, added=False)
STEP = Setting("aw-delta-step", 0.25, "Adaptive AW: Delta decrement.", "cleansing", low=0.0, low_open=True,
               added=False)
SMALLEST = Setting("aw-delta-min", 0.5, "Adaptive AW: smallest Delta tried.", "cleansing", low=0.0, low_open=True,
                   added=False)
MAX_DROP = Setting("aw-max-drop", 0.01, "Adaptive AW: keep shrinking Delta while validation accuracy stays within "
                                        "this of its start.", "cleansing", low=0.0, high=1.0, added=False)
KEEP = Setting("aw-keep", "crossing", "Adaptive AW: keep the Delta whose accuracy crossed the threshold (Algorithm 1) "
                                      "or the last one that passed.", "cleansing", choices=("crossing", "passing"),
               added=False)
STATS = Setting("aw-stats", "all", "mu and sigma of AW over all weights of the layer, a pruned neuron's counted as "
                                   "zero (Sec. IV-C), or over the kept neurons' weights only.", "cleansing",
                choices=("all", "kept"), added=False)


def schedule_fits(cfg: ExperimentConfig) -> str | None:
    """The adaptive search runs from aw-delta-start down to aw-delta-min."""
    smallest, start = SMALLEST.of(cfg), START.of(cfg)
    return None if smallest <= start else f"must be in (0, aw-delta-start={start}], got {smallest}"


@PHASES.register("aw", settings=(DELTA, START, STEP, SMALLEST, MAX_DROP, KEEP, STATS),
                 rules=(Rule("aw-delta-min", "aw-delta-min <= aw-delta-start", schedule_fits),))
def adjust_weights(ctx: Cleansing, result: str) -> None:
    """AW on the last conv layer: a fixed Delta, or Delta shrunk until clean accuracy drops (aw-keep)."""
    cfg, gm = ctx.cfg, ctx.run.global_model
    weight = layer_weight(gm.model, ctx.aw_layer)
    mask = mask_on(gm.mask, ctx.aw_layer)
    stats = weight_stats(weight, mask, STATS.of(cfg))
    deltas = delta_schedule(START.of(cfg), STEP.of(cfg), SMALLEST.of(cfg))
    chosen: float | None
    fixed = DELTA.of(cfg)
    if fixed > 0:
        chosen, base, threshold = fixed, float("nan"), float("nan")
    else:
        accuracy_of: Callable[[float], float]
        if PRUNING_ACCURACY.of(cfg) == "server":
            def on_validation(delta: float) -> float:
                with extreme_weights_zeroed(gm.model, ctx.aw_layer, stats, delta):
                    return ctx.validation_accuracy()
            accuracy_of = on_validation
        else:
            accuracy_of = dict(zip(deltas, client_accuracies(ctx, "aw", deltas), strict=True)).__getitem__
        base = ctx.model_accuracy()
        max_drop = MAX_DROP.of(cfg)
        threshold = base - max_drop
        keep_crossing = KEEP.of(cfg) == "crossing"
        searched: tuple[float | None, list[tuple[float, float]]] = stop_at_drop(deltas, accuracy_of, base, max_drop,
                                                                                keep_crossing=keep_crossing)
        chosen = searched[0]
    delta_curve(ctx, result, deltas, stats)
    zeroed = zero_extreme_weights(gm.model, ctx.aw_layer, stats, chosen, mask) if chosen is not None else 0
    ctx.finish(result, delta=chosen, zeroed=zeroed, mu=stats.mu, sigma=stats.sigma, clean_base=base,
               clean_threshold=threshold, note=f"AW Delta={chosen} zeroed {zeroed} weights of {ctx.aw_layer}")


def delta_curve(ctx: Cleansing, result: str, deltas: list[float], stats: WeightStats) -> None:
    """Fig. 6 data: TA and AA against Delta (report only); the first row is the model without AW."""
    if CURVE_POINTS.of(ctx.cfg) <= 0:
        return
    started = time.perf_counter()
    gm = ctx.run.global_model
    rows: list[dict[str, Any]] = [{"delta": "none", "zeroed": 0, "validation": ctx.validation_accuracy(),
                                   **ctx.run.evaluate()}]
    for delta in deltas:
        with extreme_weights_zeroed(gm.model, ctx.aw_layer, stats, delta) as zeroed:
            rows.append({"delta": delta, "zeroed": zeroed, "validation": ctx.validation_accuracy(),
                         **ctx.run.evaluate()})
    write_csv(ctx.run.run_dir.path / f"aw_curve_{result}.csv", rows)
    xs = [float(r["delta"]) for r in rows[1:]]
    plot_curves(ctx.run.run_dir.path / f"aw_curve_{result}.png",
                {"TA": (xs, [float(r["ta"]) for r in rows[1:]]), "AA": (xs, [float(r["aa"]) for r in rows[1:]])},
                xlabel="Delta", title=f"Adjusting extreme weights ({result})", invert_x=True)
    ctx.report_seconds += time.perf_counter() - started
