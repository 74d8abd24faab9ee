"""CLP (defenses/clp.py) as a cleansing phase: the server prunes high-Lipschitz channels, data-free."""

from __future__ import annotations

from typing import TYPE_CHECKING

from defenses.budget import Budget
from defenses.clp import clp_within_budget
from fl_backdoor.settings import Setting

from . import CLEAN_BUDGET, PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing


U = Setting("clp-u", 3.0, "clp: prune the channels whose Lipschitz upper bound exceeds mean + u std of their layer "
                          "(3, as BackdoorBench's CLP configuration).", "cleansing")


@PHASES.register("clp", settings=(U,))
def clp(ctx: Cleansing, result: str) -> None:
    """Zero the channels whose Lipschitz upper bound exceeds mean + u std of their conv layer: u = clp-u, or the
    smallest larger u (in steps of 0.5) whose validation accuracy is within clean-budget."""
    u = U.of(ctx.cfg)
    budget = Budget(ctx.validation_accuracy(), CLEAN_BUDGET.of(ctx.cfg))
    used, pruned, seen = clp_within_budget(ctx.run.global_model.model, u, lambda m: ctx.validation_accuracy(), budget)
    count = sum(len(channels) for channels in pruned.values())
    reason = None if used is not None or not seen else \
        f"pruning at every u from {u:g} upwards that prunes a channel costs more clean accuracy than the budget"
    ctx.finish(result, clp_channels=pruned, clp_pruned=count, u=u, u_used=used, unchanged=reason, u_tried=seen,
               budget=budget.record(ctx.validation_accuracy()),
               note=f"CLP: nothing zeroed ({reason})" if reason else
               f"CLP (u={used if used is not None else u:g}) zeroed {count} channels in {len(pruned)} conv layers")
