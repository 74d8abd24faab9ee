"""CLP (defenses/clp.py) as a cleansing phase: the server prunes high-Lipschitz channels, data-free."""

from __future__ import annotations

from typing import TYPE_CHECKING

from defenses.clp import clp_prune

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing


@PHASES.register("clp")
def clp(ctx: Cleansing, result: str) -> None:
    """Zero the channels whose Lipschitz upper bound exceeds mean + clp-u std of their conv layer."""
    pruned = clp_prune(ctx.run.global_model.model, ctx.cfg.clp_u)
    count = sum(len(channels) for channels in pruned.values())
    ctx.finish(result, clp_channels=pruned, clp_pruned=count, u=ctx.cfg.clp_u,
               note=f"CLP (u={ctx.cfg.clp_u:g}) zeroed {count} channels in {len(pruned)} conv layers")
