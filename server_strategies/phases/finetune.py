"""Federated fine-tuning (Sec. IV-B): FedAvg rounds on the pruned model, mask enforced, attackers taking part.

``finetune-sam`` is the same phase with the honest clients' optimiser replaced by
sharpness-aware minimization: FT-SAM (Zhu et al., ICCV 2023) run federated.  Each
honest client takes SAM steps of radius ``sam-rho`` (adaptive SAM with ``sam-adaptive``,
as FT-SAM does) on its own data; the server aggregates as in plain fine-tuning.  The
round's message carries ``sharpness-aware = true`` and nothing else changes on the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from defenses.stop_rules import Patience
from fl_backdoor.run_dir import load_checkpoint

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing


@PHASES.register("finetune")
def finetune(ctx: Cleansing, result: str) -> None:
    """FedAvg rounds on the pruned model until clean accuracy stops improving (``fine_tune``)."""
    fine_tune(ctx, result, sharpness_aware=False)


@PHASES.register("finetune-sam")
def finetune_sam(ctx: Cleansing, result: str) -> None:
    """Fine-tuning in which honest clients minimise sharpness-aware loss (FT-SAM, federated)."""
    fine_tune(ctx, result, sharpness_aware=True)


def fine_tune(ctx: Cleansing, result: str, sharpness_aware: bool) -> None:
    """FedAvg rounds on the pruned model until clean accuracy stops improving.

    The model that goes on is the last one (finetune-keep = last, as Algorithm 1's
    loop leaves it) or the one of best clean accuracy, round 0 included (best).
    The patience counters (and, for 'best', the best model) are saved every round, so a
    resumed run continues fine-tuning where it stopped.
    """
    cfg, run = ctx.cfg, ctx.run
    gm, state = run.global_model, run.state
    keep_best = cfg.finetune_keep == "best"
    if not state.step_progress:
        state.step_progress = {"best": ctx.model_accuracy(), "best_round": 0, "rounds": 0, "round": gm.round}
        if keep_best:
            run.checkpoint("ft-best", phase="finetune")
        state.save(run.run_dir)
    rule = Patience(cfg.finetune_patience, cfg.finetune_rounds, baseline=state.step_progress["best"])
    rule.best_round, rule.rounds = state.step_progress["best_round"], state.step_progress["rounds"]

    def record(accuracy: float) -> None:
        if rule.update(accuracy) and keep_best:
            run.checkpoint("ft-best", phase="finetune")
        state.step_progress = {"best": rule.best, "best_round": rule.best_round, "rounds": rule.rounds,
                               "round": gm.round}
        state.save(run.run_dir)

    if gm.round > state.step_progress.get("round", gm.round):
        # killed after a round's model was saved but before its accuracy was recorded: record it now
        record(ctx.model_accuracy())
    while not rule.stop:
        run.federated_round("finetune", gm.round + 1, entries={"sharpness-aware": True} if sharpness_aware else None)
        record(ctx.model_accuracy())
    kept_round = rule.kept_round(cfg.finetune_keep)
    if keep_best:
        gm.model.load_state_dict(load_checkpoint(run.run_dir.checkpoint("ft-best"))["state_dict"])
    state.step_progress = {}  # saved when the step completes; a later fine-tuning step starts afresh
    ctx.finish(result, rounds=rule.rounds, best_round=rule.best_round, kept_round=kept_round, best_accuracy=rule.best,
               keep=cfg.finetune_keep,
               note=f"{'SAM ' if sharpness_aware else ''}fine-tuned {rule.rounds} rounds "
                    f"(best validation in round {rule.best_round}), kept the model of round {kept_round}")
