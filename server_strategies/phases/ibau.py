"""I-BAU (defenses/ibau.py) as cleansing phases: federated (``ibau``) and on the server's clean set (``ibau-server``).

Federated: ``ibau-rounds`` FedAvg rounds; in each, every honest client runs one I-BAU
round on its own clean data (its universal perturbation, then the hypergradient
unlearning steps) and returns its model; the server averages as in fine-tuning.  The
message is fine-tuning's TRAIN message with ``unlearning = "ibau"``: the model and the
mask go out, a model comes back, so neither the perturbation nor any data leaves a
client.  Attackers take part as in fine-tuning (``finetune-attack``).

On the server: ``ibau-rounds`` I-BAU rounds on the validation set, as the centralized
comparisons use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from defenses.ibau import ibau_settings, ibau_unlearn

from . import PHASES

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing


@PHASES.register("ibau")
def ibau(ctx: Cleansing, result: str) -> None:
    """ibau-rounds federated rounds of the clients' local I-BAU rounds."""
    run, gm = ctx.run, ctx.run.global_model
    if "ibau_start" not in run.state.step_progress:  # a resumed run continues the rounds it had started
        run.state.step_progress = {"ibau_start": gm.round}
        run.state.save(run.run_dir)
    end = run.state.step_progress["ibau_start"] + ctx.cfg.ibau_rounds
    while gm.round < end:
        run.federated_round("finetune", gm.round + 1, entries={"unlearning": "ibau"})
    run.state.step_progress = {}
    ctx.finish(result, rounds=ctx.cfg.ibau_rounds, note=f"federated I-BAU: {ctx.cfg.ibau_rounds} rounds")


@PHASES.register("ibau-server")
def ibau_server(ctx: Cleansing, result: str) -> None:
    """ibau-rounds I-BAU rounds on the server's validation set."""
    gm = ctx.run.global_model
    generator = torch.Generator().manual_seed(ctx.cfg.seed)
    stats = ibau_unlearn(gm.model, ctx.val_x, ctx.val_y, ibau_settings(ctx.cfg, ctx.cfg.ibau_rounds), generator)
    ctx.finish(result, rounds=ctx.cfg.ibau_rounds, steps=stats.num_steps, loss=stats.loss,
               note=f"I-BAU on the server's {int(ctx.val_y.shape[0])} validation images: "
                    f"{ctx.cfg.ibau_rounds} rounds, {stats.num_steps} unlearning steps")
