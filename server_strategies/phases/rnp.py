"""RNP (defenses/rnp.py) as a cleansing phase, on the server's validation set."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from defenses.rnp import RNPSettings, rnp

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing


@PHASES.register("rnp")
def rnp_phase(ctx: Cleansing, result: str) -> None:
    """Unlearn, recover channel masks and prune, on the server's clean validation set."""
    settings = RNPSettings(threshold=ctx.cfg.rnp_threshold)
    found = rnp(ctx.run.global_model.model, ctx.val_x, ctx.val_y, settings, torch.Generator().manual_seed(ctx.cfg.seed))
    ctx.finish(result, **found, threshold=settings.threshold,
               note=f"RNP on {int(ctx.val_y.shape[0])} validation images: unlearned in {found['unlearning_epochs']} "
                    f"epochs, pruned {found['rnp_pruned']} channels (mask <= {settings.threshold:g})")
