"""Neural Cleanse's trigger inversion as a federated phase (``trigger-inversion``, issue 41).

1. Detection, one query round (``trigger-norms``): every client reverse-engineers, on a copy
   of the global model and its own clean data, the smallest mask and pattern that send its
   images to each label (defenses/neural_cleanse.py, ``inversion-steps`` Adam steps), and
   replies with each label's mask L1 norm, nothing else.  The server takes every label's
   median over the clients, so fewer than half of them cannot move a label's norm outside
   the honest clients' range, and flags the labels whose anomaly index over the medians
   exceeds ``inversion-threshold`` with a norm below their median, as Neural Cleanse does.
2. With a label flagged, one more query round (``trigger-pattern``, the flagged labels in
   its config): every client reverses the flagged labels' triggers again and replies with
   their masks and patterns; the server takes their element-wise median.
3. Unlearning, where ``inversion-unlearning`` says:
   - ``clients`` (default): federated fine-tuning rounds (the ``finetune`` phase's rounds,
     patience and keep) in which honest clients stamp that trigger on
     ``inversion-fraction`` of every batch and keep the true labels (training variant
     ``trigger-unlearning``).  Only the flagged trigger travels, with the model; no data
     leaves a client.  Attackers take part as in fine-tuning (``finetune-attack``).
   - ``server``: Neural Cleanse's own unlearning, on the server's validation set with the
     centralized comparisons' fine-tuning settings (defenses/fine_tuning.py), where no
     attacker takes part.  Within ``clean-budget`` of the phase's input on that set, or
     undone.

With nothing flagged the model is left unchanged.  ``results.json`` records the median
norms, the anomaly indices, the flagged labels and, for the report only, the attack's true
target (``attack_label``); no decision reads it.  The flagged labels' triggers are drawn in
the run directory's ``reversed-trigger.png`` (mask, and mask times pattern, per label).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import RecordDict

from clients.jobs import QUERIES, TRAINING, Request, TrainingVariant
from clients.local_training import client_model, job_generator
from defenses.budget import Budget
from defenses.fine_tuning import FINE_TUNING
from defenses.neural_cleanse import (
    NCSettings,
    ReversedTriggers,
    TriggerStamper,
    anomaly_indices,
    flagged_classes,
    reverse_triggers,
)
from fl_backdoor import protocol
from fl_backdoor.config import NUM_CLASSES, ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.settings import Setting
from fl_backdoor.training import BatchTransform, pick_device, train
from server_strategies.reply_checks import Checker, InvalidReply, metrics_of, unit_values

from . import CLEAN_BUDGET, PHASES
from .finetune import KEEP, PATIENCE, ROUNDS, RUNS_A_ROUND, fine_tune

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

STEPS = Setting("inversion-steps", 1000, "trigger-inversion: Adam steps of every client's reverse engineering (all "
                                         "labels at once), the cleansing paper's Neural Cleanse setup (1,000).",
                "cleansing", low=1)
THRESHOLD = Setting("inversion-threshold", 2.0, "trigger-inversion: flag a label whose anomaly index over the "
                                                "clients' median norms exceeds this (Neural Cleanse's 2).",
                    "cleansing", low=0.0)
FRACTION = Setting("inversion-fraction", 0.2, "trigger-inversion: share of every unlearning batch an honest client "
                                              "stamps with the reversed trigger, true labels kept (the centralized "
                                              "port's 0.2).", "cleansing", low=0.0, high=1.0)
UNLEARNING_AT = Setting("inversion-unlearning", "clients", "trigger-inversion: where the flagged trigger is unlearned: "
                                                          "clients (federated fine-tuning rounds, attackers taking "
                                                          "part) or server (Neural Cleanse's unlearning on the "
                                                          "validation set, within clean-budget).", "cleansing",
                        choices=("clients", "server"))
TRIGGER_NORMS, TRIGGER_PATTERN, UNLEARNING = "trigger-norms", "trigger-pattern", "trigger-unlearning"


def nc_settings(cfg: ExperimentConfig) -> NCSettings:
    """Neural Cleanse's settings with the configured steps, threshold and stamped share."""
    return NCSettings(steps=STEPS.of(cfg), anomaly_threshold=THRESHOLD.of(cfg), unlearn_fraction=FRACTION.of(cfg))


def reversed_on_client(req: Request, labels: Sequence[int] | None) -> ReversedTriggers:
    """The client's reversed triggers (every label, or ``labels``) on its own data."""
    cfg = req.cfg
    model = client_model(cfg, req.state, req.mask)
    x, y = client_data(cfg, req.client_id, pick_device(cfg.device))
    return reverse_triggers(model, x, y, NUM_CLASSES, nc_settings(cfg),
                            job_generator(cfg, req.client_id, req.server_round, "cleanse"), labels=labels)


@QUERIES.register(TRIGGER_NORMS)
def trigger_norms(req: Request) -> dict[str, Any]:
    """The client's side of detection: every label's reversed mask L1 norm."""
    return {"norms": [float(n) for n in reversed_on_client(req, None).norms]}


@QUERIES.register(TRIGGER_PATTERN)
def trigger_pattern(req: Request) -> dict[str, Any]:
    """The client's reversed masks and patterns of the flagged labels (the message's ``labels``), flattened."""
    found = reversed_on_client(req, protocol.numbers(req.config, "labels", int))
    return {"masks": found.masks.flatten().tolist(), "patterns": found.patterns.flatten().tolist()}


def norms_checker(pixels: int) -> Checker:
    """A detection reply: one finite mask norm in [0, pixels] per label."""
    def check(content: RecordDict) -> list[float]:
        norms = metrics_of(content).get("norms")
        if not isinstance(norms, list) or len(norms) != NUM_CLASSES:
            raise InvalidReply(f"expected {NUM_CLASSES} norms")
        if not all(isinstance(n, (int, float)) and math.isfinite(n) and 0.0 <= n <= pixels for n in norms):
            raise InvalidReply(f"a norm lies outside [0, {pixels}]")
        return [float(n) for n in norms]
    return check


def pattern_checker(labels: int, channels: int, pixels: int) -> Checker:
    """A trigger reply: ``labels`` masks of ``pixels`` values and patterns of ``channels`` x ``pixels``, in [0, 1]."""
    def check(content: RecordDict) -> tuple[list[float], list[float]]:
        metrics = metrics_of(content)
        return unit_values(metrics, "masks", labels * pixels), unit_values(metrics, "patterns",
                                                                           labels * channels * pixels)
    return check


def median_norms(replies: Sequence[Sequence[float]]) -> np.ndarray:
    """Every label's median mask norm over the clients (each client counts once)."""
    values = np.asarray(replies, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError("median_norms: one row of norms per client, at least one client")
    return np.median(values, axis=0)


@TRAINING.register(UNLEARNING)
class TriggerUnlearning(TrainingVariant):
    """Honest clients stamp the server's reversed trigger on a share of every batch, true labels kept."""

    def transform(self, cfg: ExperimentConfig, x: torch.Tensor) -> BatchTransform | None:
        return stamper(cfg, self.entries, x)


def stamper(cfg: ExperimentConfig, entries: Mapping[str, Any], x: torch.Tensor) -> TriggerStamper:
    """The unlearning batch transform of the flagged triggers in ``entries`` (their labels, masks and patterns,
    flattened), for images shaped like ``x``."""
    labels = protocol.numbers(entries, "trigger-labels", int)
    masks = torch.tensor(protocol.numbers(entries, "trigger-masks", float),
                         dtype=x.dtype).view(len(labels), 1, *x.shape[2:])
    patterns = torch.tensor(protocol.numbers(entries, "trigger-patterns", float),
                            dtype=x.dtype).view(len(labels), *x.shape[1:])
    triggers = ReversedTriggers(masks.to(x.device), patterns.to(x.device), np.zeros(len(labels)),
                                np.zeros(len(labels)), labels)
    return TriggerStamper(triggers, labels, FRACTION.of(cfg))


def unlearn_on_server(ctx: Cleansing, result: str, entries: dict[str, Any], **facts: Any) -> None:
    """Neural Cleanse's unlearning of the flagged triggers on the validation set, undone unless the model stays
    within clean-budget of the phase's input there."""
    gm, cfg = ctx.run.global_model, ctx.cfg
    budget = Budget(ctx.validation_accuracy(), CLEAN_BUDGET.of(cfg))
    before = {k: v.detach().clone() for k, v in gm.model.state_dict().items()}
    stats = train(gm.model, ctx.val_x, ctx.val_y, FINE_TUNING, torch.Generator().manual_seed(cfg.seed),
                  batch_transform=stamper(cfg, entries, ctx.val_x))
    accuracy = ctx.validation_accuracy()
    kept = budget.allows(accuracy)
    if not kept:
        gm.model.load_state_dict(before)
    images = int(ctx.val_y.shape[0])
    ctx.run.state.step_progress = {}  # saved when the step completes; a resumed run before then keeps the detection
    ctx.finish(result, **facts, unlearning="server", epochs=FINE_TUNING.epochs, steps=stats.num_steps,
               loss=stats.loss, budget=budget.record(ctx.validation_accuracy(), unlearned=accuracy),
               note=f"trigger inversion flagged {facts['flagged']}, then unlearning on the server's {images} "
                    f"validation images: {stats.num_steps} steps, validation {accuracy:.4f}"
                    + ("" if kept else f", below the budget's floor {budget.floor:.4f}: undone"))


def save_flagged(path: Path, found: dict[str, Any], shape: tuple[int, int, int]) -> None:
    """The flagged labels' median triggers as an image to look at: per label, its mask and the stamp (mask x
    pattern), side by side."""
    from torchvision.utils import save_image

    channels, height, width = shape
    masks = torch.tensor(found["trigger-masks"]).view(-1, 1, height, width).expand(-1, channels, -1, -1)
    patterns = torch.tensor(found["trigger-patterns"]).view(-1, channels, height, width)
    tiles = torch.stack([masks, masks * patterns], dim=1).flatten(0, 1)
    save_image(tiles, path, nrow=2, padding=1, pad_value=0.5)


@PHASES.register("trigger-inversion", settings=(STEPS, THRESHOLD, FRACTION, UNLEARNING_AT, ROUNDS, PATIENCE, KEEP),
                 rules=(RUNS_A_ROUND,))
def trigger_inversion(ctx: Cleansing, result: str) -> None:
    """Clients reverse triggers and report norms; the server flags labels by their median norms' anomaly index,
    gathers the flagged triggers' median, and runs unlearning rounds with it."""
    run, cfg = ctx.run, ctx.cfg
    channels, height, width = ctx.val_x.shape[1:]
    pixels = height * width
    found = run.state.step_progress.get("inversion")
    if found is None:  # a resumed run keeps the detection it made before it was stopped
        replies = [n for _, n in ctx.query_clients(TRIGGER_NORMS, {}, norms_checker(pixels), "trigger norms")]
        norms = median_norms(replies)
        flagged = flagged_classes(norms, THRESHOLD.of(cfg))
        found = {"clients": len(replies), "norms": [float(n) for n in norms],
                 "anomaly_index": [float(a) for a in anomaly_indices(norms)], "flagged": flagged}
        if flagged:
            answered = ctx.query_clients(TRIGGER_PATTERN, {"labels": flagged},
                                         pattern_checker(len(flagged), int(channels), pixels), "reversed triggers")
            found["trigger-masks"] = np.median([m for _, (m, _) in answered], axis=0).tolist()
            found["trigger-patterns"] = np.median([p for _, (_, p) in answered], axis=0).tolist()
            found["pattern_clients"] = len(answered)
            save_flagged(run.run_dir.path / "reversed-trigger.png", found, (int(channels), height, width))
        run.state.step_progress = {"inversion": found}
        run.state.save(run.run_dir)
    facts = {k: v for k, v in found.items() if not k.startswith("trigger-")}
    facts["true_target"] = cfg.attack_label if cfg.attackers else None  # the report's, never a decision's
    if not found["flagged"]:
        run.state.step_progress = {}
        ctx.finish(result, **facts, rounds=0, note="trigger inversion flagged no label: the model is unchanged")
        return
    entries = {protocol.TRAINING: UNLEARNING, "trigger-labels": found["flagged"],
               "trigger-masks": found["trigger-masks"], "trigger-patterns": found["trigger-patterns"]}
    if UNLEARNING_AT.of(cfg) == "server":
        unlearn_on_server(ctx, result, entries, **facts)
        return
    fine_tune(ctx, result, entries, f"trigger inversion flagged {found['flagged']}, then unlearning: ", **facts)
