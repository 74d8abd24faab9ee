"""I-BAU (defenses/ibau.py) as cleansing phases: federated (``ibau``) and on the server's clean set (``ibau-server``).

Federated: ``ibau-rounds`` FedAvg rounds; in each, every honest client runs one I-BAU
round on its own clean data (its universal perturbation, then the hypergradient
unlearning steps) and returns its model; the server averages as in fine-tuning.  The
message is fine-tuning's TRAIN message naming the training variant ``ibau`` (registered
here, clients/jobs.py): the model and the mask go out, a model comes back, so neither
the perturbation nor any data leaves a client.  Attackers take part as in fine-tuning
(``finetune-attack``).

On the server: ``ibau-rounds`` I-BAU rounds on the validation set, as the centralized
comparisons use it.

The work is stated in steps: ``ibau-steps`` (50, BackdoorBench's 5 rounds over 5% of
CIFAR-10 in batches of 256) is the fewest unlearning steps the phase takes on each clean
set, so on the server's 600 images (3 batches a round) it runs 17 rounds, not 5 (15 steps
in all); federated, the rounds are enough for the client with the fewest batches.

Both stop early within ``clean-budget``: the first round after which the validation
accuracy is more than the budget below the phase's input is undone and ends the phase.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from clients.jobs import TRAINING, TrainingVariant
from defenses.budget import Budget
from defenses.ibau import IBAUSettings, ibau_unlearn
from fl_backdoor import protocol
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.settings import Setting
from fl_backdoor.training import TrainStats

from . import CLEAN_BUDGET, PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

ROUNDS = Setting("ibau-rounds", 5, "ibau, ibau-server: I-BAU rounds (the reference code's 5); federated, one round is "
                                   "one FedAvg round of every client's local I-BAU round.", "cleansing", low=1)
NORM = Setting("ibau-norm", 10.0, "ibau: L2 bound on the universal perturbation (the reference's 10).", "cleansing",
               low=0.0, low_open=True)
LR = Setting("ibau-lr", 1e-4, "ibau: Adam learning rate of the unlearning steps (BackdoorBench's I-BAU "
                              "configuration).", "cleansing", low=0.0, low_open=True)
STEPS = Setting("ibau-steps", 50, "ibau, ibau-server: the fewest unlearning steps on each clean set: rounds are added "
                                  "beyond ibau-rounds until each takes this many (BackdoorBench's 5 rounds over 5% "
                                  "of CIFAR-10 in batches of 256: 50).", "cleansing", low=0)
SETTINGS = (ROUNDS, NORM, LR, STEPS)


def ibau_settings(cfg: ExperimentConfig, rounds: int) -> IBAUSettings:
    """I-BAU's settings: the reference code's, with the configured bound and learning rate."""
    return IBAUSettings(rounds=rounds, norm=NORM.of(cfg), lr=LR.of(cfg))


def rounds_for(cfg: ExperimentConfig, examples: int) -> int:
    """ibau-rounds, or more: enough rounds over ``examples`` clean images for ibau-steps steps."""
    batches = max(math.ceil(examples / IBAUSettings.batch_size), 1)
    return max(ROUNDS.of(cfg), math.ceil(STEPS.of(cfg) / batches))


@TRAINING.register("ibau")
class IBAURound(TrainingVariant):
    """An honest client runs one I-BAU round on its clean data instead of training."""

    def honest_training(self, cfg: ExperimentConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        generator: torch.Generator) -> TrainStats | None:
        return ibau_unlearn(model, x, y, ibau_settings(cfg, rounds=1), generator)


@PHASES.register("ibau", settings=SETTINGS)
def ibau(ctx: Cleansing, result: str) -> None:
    """ibau-rounds federated rounds of the clients' local I-BAU rounds."""
    run, gm = ctx.run, ctx.run.global_model
    rounds = rounds_for(ctx.cfg, min(ctx.sizes))
    if "ibau_start" not in run.state.step_progress:  # a resumed run continues the rounds it had started
        run.state.step_progress = {"ibau_start": gm.round, "clean_input": ctx.validation_accuracy()}
        run.state.save(run.run_dir)
    budget = Budget(run.state.step_progress["clean_input"], CLEAN_BUDGET.of(ctx.cfg))
    start = run.state.step_progress["ibau_start"]
    stopped = None
    while gm.round < start + rounds and stopped is None:
        before = {k: v.detach().clone() for k, v in gm.model.state_dict().items()}
        run.federated_round("finetune", gm.round + 1, entries={protocol.TRAINING: "ibau"})
        accuracy = ctx.validation_accuracy()
        if not budget.allows(accuracy):
            gm.model.load_state_dict(before)
            stopped = f"round {gm.round} left validation accuracy {accuracy:.4f}, below the budget's floor " \
                      f"{budget.floor:.4f}: undone, and the phase ended"
    kept = gm.round - start - (stopped is not None)
    run.state.step_progress = {}
    ctx.finish(result, rounds=rounds, rounds_kept=kept, stopped=stopped,
               budget=budget.record(ctx.validation_accuracy()),
               note=f"federated I-BAU: {kept} of {rounds} rounds kept" + (f" ({stopped})" if stopped else ""))


@PHASES.register("ibau-server", settings=SETTINGS)
def ibau_server(ctx: Cleansing, result: str) -> None:
    """ibau-rounds I-BAU rounds on the server's validation set."""
    gm, rounds = ctx.run.global_model, rounds_for(ctx.cfg, int(ctx.val_y.shape[0]))
    budget = Budget(ctx.validation_accuracy(), CLEAN_BUDGET.of(ctx.cfg))
    generator = torch.Generator().manual_seed(ctx.cfg.seed)
    stats = ibau_unlearn(gm.model, ctx.val_x, ctx.val_y, ibau_settings(ctx.cfg, rounds), generator,
                         keep=lambda m: budget.allows(ctx.validation_accuracy()))
    kept = stats.num_examples // max(int(ctx.val_y.shape[0]), 1)
    ctx.finish(result, rounds=rounds, rounds_kept=kept, steps=stats.num_steps, loss=stats.loss,
               budget=budget.record(ctx.validation_accuracy()),
               note=f"I-BAU on the server's {int(ctx.val_y.shape[0])} validation images: "
                    f"{kept} of {rounds} rounds kept, {stats.num_steps} unlearning steps")
