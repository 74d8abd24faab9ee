"""RNP (defenses/rnp.py) as cleansing phases: federated (``rnp``) and on the server's validation set (``rnp-server``).

Federated: one query round, the clients' query ``rnp-masks`` (registered here).  Every
client unlearns its own clean data on a copy of the global model and recovers the
channel masks on it (RNP's steps 1 and 2), then sends the masks (one value in [0, 1] per
conv channel), its example count, and its unlearning epochs and accuracy; never data or
models.  The server checks each reply, averages the masks weighted by the example counts
(each capped at the client's partition size, as every report here) and prunes the
channels whose average is at most ``rnp-threshold`` (step 3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import RecordDict

from clients.jobs import QUERIES, Request
from clients.local_training import client_model, job_generator
from defenses.rnp import (
    RNPSettings,
    channel_counts,
    flatten_masks,
    prune_by_masks,
    pruning_summary,
    rnp,
    rnp_masks,
    split_masks,
)
from fl_backdoor.federation_data import client_data
from fl_backdoor.settings import Setting
from fl_backdoor.training import pick_device
from server_strategies.reply_checks import Checker, InvalidReply, metrics_of, num_examples, unit_value, unit_values

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

THRESHOLD = Setting("rnp-threshold", 0.7, "rnp, rnp-server: prune the channels whose recovered mask (federated: the "
                                          "clients' average) is at most this (BackdoorBench's RNP pruning_number).",
                    "cleansing", low=0.0, high=1.0)
RNP_MASKS = "rnp-masks"


@QUERIES.register(RNP_MASKS)
def rnp_report(req: Request) -> dict[str, Any]:
    """The client's side: channel masks recovered after unlearning its clean data, its example count, unlearning
    epochs and unlearned accuracy."""
    cfg = req.cfg
    model = client_model(cfg, req.state, req.mask)
    x, y = client_data(cfg, req.client_id, pick_device(cfg.device))
    found = rnp_masks(model, x, y, RNPSettings(), job_generator(cfg, req.client_id, req.server_round, "cleanse"))
    return {"masks": flatten_masks(found.masks), "num-examples": int(y.shape[0]),
            "unlearning-epochs": found.unlearning_epochs, "unlearned-accuracy": found.unlearned_accuracy}


def rnp_checker(count: int) -> Checker:
    """A federated RNP reply: ``count`` channel masks in [0, 1], an example count, and the client's
    unlearning epochs (a count) and unlearned accuracy (in [0, 1])."""
    def check(content: RecordDict) -> tuple[list[float], int, int, float]:
        metrics = metrics_of(content)
        epochs = metrics.get("unlearning-epochs")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise InvalidReply(f"unlearning-epochs {epochs!r} is not a count")
        return (unit_values(metrics, "masks", count), num_examples(metrics), epochs,
                unit_value(metrics, "unlearned-accuracy"))
    return check


@PHASES.register("rnp", settings=(THRESHOLD,))
def rnp_federated(ctx: Cleansing, result: str) -> None:
    """Every client recovers masks on its own data; the server prunes by their weighted average."""
    model, threshold = ctx.run.global_model.model, THRESHOLD.of(ctx.cfg)
    reports = ctx.query_clients(RNP_MASKS, {}, rnp_checker(sum(channel_counts(model).values())), "RNP masks")
    masks = split_masks(model, ctx.weighted_mean([(c, m, n) for c, (m, n, _, _) in reports]))
    pruned = prune_by_masks(model, masks, threshold)
    summary = pruning_summary(masks, pruned)
    ctx.finish(result, **summary, threshold=threshold, clients=len(reports),
               unlearning_epochs=float(np.mean([e for _, (_, _, e, _) in reports])),
               unlearned_accuracy=float(np.mean([a for _, (_, _, _, a) in reports])),
               note=f"federated RNP, masks of {len(reports)} clients: pruned {summary['rnp_pruned']} channels "
                    f"(mean mask <= {threshold:g})")


@PHASES.register("rnp-server", settings=(THRESHOLD,))
def rnp_server(ctx: Cleansing, result: str) -> None:
    """Unlearn, recover channel masks and prune, on the server's clean validation set."""
    settings = RNPSettings(threshold=THRESHOLD.of(ctx.cfg))
    found = rnp(ctx.run.global_model.model, ctx.val_x, ctx.val_y, settings, torch.Generator().manual_seed(ctx.cfg.seed))
    ctx.finish(result, **found, threshold=settings.threshold,
               note=f"RNP on {int(ctx.val_y.shape[0])} validation images: unlearned in {found['unlearning_epochs']} "
                    f"epochs, pruned {found['rnp_pruned']} channels (mask <= {settings.threshold:g})")
