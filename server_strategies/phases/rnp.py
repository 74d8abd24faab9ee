"""RNP (defenses/rnp.py) as cleansing phases: federated (``rnp``) and on the server's validation set (``rnp-server``).

Federated: one query round.  Every client unlearns its own clean data on a copy of the
global model and recovers the channel masks on it (RNP's steps 1 and 2), then sends the
masks (one value in [0, 1] per conv channel), its example count, and its unlearning
epochs and accuracy; never data or models.  The server averages the masks weighted by the
example counts (each capped at the client's partition size, as every report here) and
prunes the channels whose average is at most ``rnp-threshold`` (step 3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from defenses.rnp import RNPSettings, channel_counts, prune_by_masks, pruning_summary, rnp, split_masks
from fl_backdoor import protocol
from server_strategies.reply_checks import rnp_checker

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing


@PHASES.register("rnp")
def rnp_federated(ctx: Cleansing, result: str) -> None:
    """Every client recovers masks on its own data; the server prunes by their weighted average."""
    model = ctx.run.global_model.model
    reports = ctx.query_clients(protocol.RNP_MASKS, {}, rnp_checker(sum(channel_counts(model).values())),
                                "RNP masks")
    masks = split_masks(model, ctx.weighted_mean([(c, m, n) for c, (m, n, _, _) in reports]))
    pruned = prune_by_masks(model, masks, ctx.cfg.rnp_threshold)
    summary = pruning_summary(masks, pruned)
    ctx.finish(result, **summary, threshold=ctx.cfg.rnp_threshold, clients=len(reports),
               unlearning_epochs=float(np.mean([e for _, (_, _, e, _) in reports])),
               unlearned_accuracy=float(np.mean([a for _, (_, _, _, a) in reports])),
               note=f"federated RNP, masks of {len(reports)} clients: pruned {summary['rnp_pruned']} channels "
                    f"(mean mask <= {ctx.cfg.rnp_threshold:g})")


@PHASES.register("rnp-server")
def rnp_server(ctx: Cleansing, result: str) -> None:
    """Unlearn, recover channel masks and prune, on the server's clean validation set."""
    settings = RNPSettings(threshold=ctx.cfg.rnp_threshold)
    found = rnp(ctx.run.global_model.model, ctx.val_x, ctx.val_y, settings, torch.Generator().manual_seed(ctx.cfg.seed))
    ctx.finish(result, **found, threshold=settings.threshold,
               note=f"RNP on {int(ctx.val_y.shape[0])} validation images: unlearned in {found['unlearning_epochs']} "
                    f"epochs, pruned {found['rnp_pruned']} channels (mask <= {settings.threshold:g})")
