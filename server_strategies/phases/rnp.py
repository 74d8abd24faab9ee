"""RNP (defenses/rnp.py) as cleansing phases: federated (``rnp``) and on the server's validation set (``rnp-server``).

Federated: one query round, the clients' query ``rnp-masks`` (registered here).  Every
client unlearns its own clean data on a copy of the global model and recovers the
channel masks on it (RNP's steps 1 and 2), then sends the masks (one value in [0, 1] per
conv channel), its example count, its unlearning epochs and accuracy, and what RNP's
precondition looks at (the share of its clean images the unlearned copy puts in one class,
and how much the copy's logits grew); never data or models.  The server checks each reply,
averages the masks weighted by the example counts (each capped at the client's partition
size, as every report here) and prunes the channels whose average is at most the
strongest threshold within ``clean-budget`` on its validation set (step 3).  When the
median client's unlearned copy fails the precondition (defenses/rnp.py), nothing is pruned.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from flwr.app import RecordDict

from clients.jobs import QUERIES, Request
from clients.local_training import client_model, job_generator
from defenses.budget import Budget
from defenses.rnp import (
    RNPSettings,
    channel_counts,
    flatten_masks,
    precondition,
    prune_within_budget,
    pruning_summary,
    rnp,
    rnp_masks,
    split_masks,
)
from fl_backdoor.federation_data import client_data
from fl_backdoor.settings import Setting
from fl_backdoor.training import pick_device
from server_strategies.reply_checks import Checker, InvalidReply, metrics_of, num_examples, unit_value, unit_values

from . import CLEAN_BUDGET, PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

THRESHOLD = Setting("rnp-threshold", 0.7, "rnp, rnp-server: prune the channels whose recovered mask (federated: the "
                                          "clients' average) is at most this (BackdoorBench's RNP pruning_number).",
                    "cleansing", low=0.0, high=1.0)
RNP_MASKS = "rnp-masks"


@QUERIES.register(RNP_MASKS)
def rnp_report(req: Request) -> dict[str, Any]:
    """The client's side: channel masks recovered after unlearning its clean data, its example count, and how the
    unlearning went."""
    cfg = req.cfg
    model = client_model(cfg, req.state, req.mask)
    x, y = client_data(cfg, req.client_id, pick_device(cfg.device))
    found = rnp_masks(model, x, y, RNPSettings(), job_generator(cfg, req.client_id, req.server_round, "cleanse"))
    return {"masks": flatten_masks(found.masks), "num-examples": int(y.shape[0]),
            "unlearning-epochs": found.unlearning_epochs, "unlearned-accuracy": found.unlearned_accuracy,
            "top-class-share": found.top_class_share, "logit-growth": found.logit_growth}


class RNPReply(NamedTuple):
    """A client's checked RNP reply."""

    masks: list[float]
    examples: int
    epochs: int
    accuracy: float
    top_class_share: float
    logit_growth: float


def rnp_checker(count: int) -> Checker:
    """A federated RNP reply: ``count`` channel masks in [0, 1], an example count, the client's unlearning epochs
    (a count), its unlearned accuracy and top-class share (in [0, 1]) and its logit growth (finite, >= 0)."""
    def check(content: RecordDict) -> RNPReply:
        metrics = metrics_of(content)
        epochs = metrics.get("unlearning-epochs")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise InvalidReply(f"unlearning-epochs {epochs!r} is not a count")
        growth = metrics.get("logit-growth")
        if not isinstance(growth, (int, float)) or isinstance(growth, bool) or not math.isfinite(growth) \
                or growth < 0:
            raise InvalidReply(f"logit-growth {growth!r} is not a finite number >= 0")
        return RNPReply(unit_values(metrics, "masks", count), num_examples(metrics), epochs,
                        unit_value(metrics, "unlearned-accuracy"), unit_value(metrics, "top-class-share"),
                        float(growth))
    return check


@PHASES.register("rnp", settings=(THRESHOLD,))
def rnp_federated(ctx: Cleansing, result: str) -> None:
    """Every client recovers masks on its own data; the server prunes by their weighted average, within the budget."""
    model, threshold = ctx.run.global_model.model, THRESHOLD.of(ctx.cfg)
    budget = Budget(ctx.validation_accuracy(), CLEAN_BUDGET.of(ctx.cfg))
    answered: list[tuple[int, RNPReply]] = ctx.query_clients(
        RNP_MASKS, {}, rnp_checker(sum(channel_counts(model).values())), "RNP masks")
    replies = [r for _, r in answered]
    masks = split_masks(model, ctx.weighted_mean([(c, r.masks, r.examples) for c, r in answered]))
    facts = {"clients": len(replies), "unlearning_epochs": float(np.mean([r.epochs for r in replies])),
             "unlearned_accuracy": float(np.mean([r.accuracy for r in replies])),
             "top_class_share": float(np.median([r.top_class_share for r in replies])),
             "logit_growth": float(np.median([r.logit_growth for r in replies]))}
    failed = precondition(facts["top_class_share"], facts["logit_growth"])
    used: float | None = None
    pruned: dict[str, list[int]] = {}
    reason: str | None = f"the median client: {failed}" if failed else None
    if not failed:
        used, pruned, _ = prune_within_budget(model, masks, threshold, lambda m: ctx.validation_accuracy(), budget)
        reason = None if used is not None else (f"pruning at every threshold from {threshold:g} down to 0 costs "
                                                f"more clean accuracy than the budget {budget.budget:g}")
    summary = pruning_summary(masks, pruned)
    ctx.finish(result, **summary, **facts, threshold=threshold, threshold_used=used, unchanged=reason,
               budget=budget.record(ctx.validation_accuracy()),
               note=f"federated RNP, masks of {len(replies)} clients: "
                    + (f"nothing pruned ({reason})" if reason else
                       f"pruned {summary['rnp_pruned']} channels (mean mask <= {used:g})"))


@PHASES.register("rnp-server", settings=(THRESHOLD,))
def rnp_server(ctx: Cleansing, result: str) -> None:
    """Unlearn, recover channel masks and prune within the budget, on the server's clean validation set."""
    settings = RNPSettings(threshold=THRESHOLD.of(ctx.cfg))
    found = rnp(ctx.run.global_model.model, ctx.val_x, ctx.val_y, settings, torch.Generator().manual_seed(ctx.cfg.seed),
                CLEAN_BUDGET.of(ctx.cfg))
    reason = found["unchanged"]
    ctx.finish(result, **found, threshold=settings.threshold,
               note=f"RNP on {int(ctx.val_y.shape[0])} validation images: unlearned in {found['unlearning_steps']} "
                    f"steps, " + (f"nothing pruned ({reason})" if reason else
                                  f"pruned {found['rnp_pruned']} channels (mask <= {found['threshold_used']:g})"))
