"""CLP (defenses/clp.py) as a cleansing phase: the server prunes high-Lipschitz channels, data-free."""

from __future__ import annotations

from typing import TYPE_CHECKING

from defenses.clp import clp_prune
from fl_backdoor.settings import Setting

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing


U = Setting("clp-u", 3.0, "clp: prune the channels whose Lipschitz upper bound exceeds mean + u std of their layer "
                          "(3, as BackdoorBench's CLP configuration).", "cleansing")


@PHASES.register("clp", settings=(U,))
def clp(ctx: Cleansing, result: str) -> None:
    """Zero the channels whose Lipschitz upper bound exceeds mean + clp-u std of their conv layer."""
    u = U.of(ctx.cfg)
    pruned = clp_prune(ctx.run.global_model.model, u)
    count = sum(len(channels) for channels in pruned.values())
    ctx.finish(result, clp_channels=pruned, clp_pruned=count, u=u,
               note=f"CLP (u={u:g}) zeroed {count} channels in {len(pruned)} conv layers")
