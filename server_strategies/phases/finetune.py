"""Federated fine-tuning (Sec. IV-B): FedAvg rounds on the pruned model, mask enforced, attackers taking part.

``finetune-sam`` is the same phase with the honest clients' optimiser replaced by
sharpness-aware minimization: FT-SAM (Zhu et al., ICCV 2023) run federated.
``finetune-sam-server`` is FT-SAM as its paper runs it, on one clean set: the server's
validation set, with the centralized fine-tuning baseline's optimiser
(defenses/fine_tuning.py) taking SAM steps.  Each
honest client takes SAM steps of radius ``sam-rho`` (adaptive SAM with ``sam-adaptive``,
as FT-SAM does) on its own data; the server aggregates as in plain fine-tuning.  The
round's train message names the training variant ``sharpness-aware`` (registered here,
clients/jobs.py) and nothing else changes on the wire.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import RecordDict

from clients.jobs import TRAINING, TrainingVariant
from defenses.fine_tuning import FINE_TUNING
from defenses.stop_rules import Patience
from fl_backdoor import protocol
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.run_dir import load_checkpoint
from fl_backdoor.settings import Rule, Setting
from fl_backdoor.training import SGDSettings, train

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

ROUNDS = Setting("finetune-rounds", 10, "Maximum federated fine-tuning rounds.", "cleansing", low=0, added=False)
PATIENCE = Setting("finetune-patience", 2, "Stop fine-tuning after this many rounds without improving on the best "
                                          "accuracy so far (the pruned model's included).", "cleansing", low=1,
                   added=False)
KEEP = Setting("finetune-keep", "last", "Model fine-tuning hands to AW: last (the model when it stops, Algorithm 1) "
                                        "or best (best validation accuracy, the pruned model of round 0 included).",
               "cleansing", choices=("last", "best"), added=False)
SAM_RHO = Setting("sam-rho", 2.0, "finetune-sam: radius rho of the weight perturbation (FT-SAM's BackdoorBench "
                                  "setting, 2.0, with adaptive SAM).", "cleansing", low=0.0, low_open=True)
SAM_ADAPTIVE = Setting("sam-adaptive", True, "finetune-sam: adaptive SAM (perturbation scaled by |w|, Kwon et al. "
                                             "2021) as FT-SAM uses; false = plain SAM.", "cleansing")
RUNS_A_ROUND = Rule("finetune-rounds", "finetune-rounds >= 1 when the defense fine-tunes",
                    lambda cfg: None if ROUNDS.of(cfg) >= 1 else
                    f"0 rounds with defense '{cfg.defense}': fine-tuning would run no round")


@TRAINING.register("sharpness-aware")
class SharpnessAware(TrainingVariant):
    """Honest clients take SAM steps of radius sam-rho (adaptive with sam-adaptive)."""

    def settings(self, cfg: ExperimentConfig, settings: SGDSettings) -> SGDSettings:
        return replace(settings, sam_rho=SAM_RHO.of(cfg), sam_adaptive=SAM_ADAPTIVE.of(cfg))


@PHASES.register("finetune", settings=(ROUNDS, PATIENCE, KEEP), rules=(RUNS_A_ROUND,))
def finetune(ctx: Cleansing, result: str) -> None:
    """FedAvg rounds on the pruned model until clean accuracy stops improving (``fine_tune``)."""
    fine_tune(ctx, result)


@PHASES.register("finetune-sam", settings=(ROUNDS, PATIENCE, KEEP, SAM_RHO, SAM_ADAPTIVE), rules=(RUNS_A_ROUND,))
def finetune_sam(ctx: Cleansing, result: str) -> None:
    """Fine-tuning in which honest clients minimise sharpness-aware loss (FT-SAM, federated)."""
    fine_tune(ctx, result, {protocol.TRAINING: "sharpness-aware"}, "SAM ")


@PHASES.register("finetune-sam-server", settings=(SAM_RHO, SAM_ADAPTIVE))
def finetune_sam_server(ctx: Cleansing, result: str) -> None:
    """FT-SAM on the server's validation set: the centralized fine-tuning settings with SAM steps."""
    settings = replace(FINE_TUNING, sam_rho=SAM_RHO.of(ctx.cfg), sam_adaptive=SAM_ADAPTIVE.of(ctx.cfg))
    generator = torch.Generator().manual_seed(ctx.cfg.seed)
    stats = train(ctx.run.global_model.model, ctx.val_x, ctx.val_y, settings, generator)
    ctx.finish(result, epochs=settings.epochs, steps=stats.num_steps, loss=stats.loss, lr=settings.lr,
               note=f"FT-SAM on the server's {int(ctx.val_y.shape[0])} validation images: {settings.epochs} epochs, "
                    f"{stats.num_steps} SAM steps of lr {settings.lr:g}")


def fine_tune(ctx: Cleansing, result: str, entries: dict[str, Any] | None = None, kind: str = "",
              **facts: Any) -> None:
    """FedAvg rounds on the pruned model until clean accuracy stops improving.

    ``entries`` go with every round's train message (a training variant and what it needs), ``kind`` prefixes
    the note, and ``facts`` join the step's result.

    The model that goes on is the last one (finetune-keep = last, as Algorithm 1's
    loop leaves it) or the one of best clean accuracy, round 0 included (best).
    The patience counters (and, for 'best', the best model) are saved every round, so a
    resumed run continues fine-tuning where it stopped.
    """
    cfg, run = ctx.cfg, ctx.run
    gm, state = run.global_model, run.state
    keep = KEEP.of(cfg)
    keep_best = keep == "best"
    if "best" not in state.step_progress:
        # a phase that fine-tunes after its own step (trigger-inversion) keeps its entries beside these
        state.step_progress = {**state.step_progress, "best": ctx.model_accuracy(), "best_round": 0, "rounds": 0,
                               "round": gm.round}
        if keep_best:
            run.checkpoint("ft-best", phase="finetune")
        state.save(run.run_dir)
    rule = Patience(PATIENCE.of(cfg), ROUNDS.of(cfg), baseline=state.step_progress["best"])
    rule.best_round, rule.rounds = state.step_progress["best_round"], state.step_progress["rounds"]

    def record(accuracy: float) -> None:
        if rule.update(accuracy) and keep_best:
            run.checkpoint("ft-best", phase="finetune")
        state.step_progress = {**state.step_progress, "best": rule.best, "best_round": rule.best_round,
                               "rounds": rule.rounds, "round": gm.round}
        state.save(run.run_dir)

    if gm.round > state.step_progress.get("round", gm.round):
        # killed after a round's model was saved but before its accuracy was recorded: record it now
        record(ctx.model_accuracy())
    while not rule.stop:
        run.federated_round("finetune", gm.round + 1, entries=entries)
        record(ctx.model_accuracy())
    kept_round = rule.kept_round(keep)
    if keep_best:
        gm.model.load_state_dict(load_checkpoint(run.run_dir.checkpoint("ft-best"))["state_dict"])
    state.step_progress = {}  # saved when the step completes; a later fine-tuning step starts afresh
    # what one client sends back each round: its model (the train reply's arrays)
    update = protocol.wire_bytes(RecordDict({protocol.ARRAYS: gm.arrays()}))
    ctx.finish(result, **facts, rounds=rule.rounds, best_round=rule.best_round, kept_round=kept_round,
               best_accuracy=rule.best, keep=keep, reply_bytes={"model update": float(update)},
               note=f"{kind}fine-tuned {rule.rounds} rounds "
                    f"(best validation in round {rule.best_round}), kept the model of round {kept_round}")
