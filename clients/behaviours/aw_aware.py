"""An attacker who knows AW: it keeps its last conv layer inside mu +/- adaptive-delta * sigma.

It clips after every training step and on the submitted model, so AW finds nothing
extreme to remove.
"""

from __future__ import annotations

import torch
from torch import nn

from fl_backdoor.masks import NeuronMask
from fl_backdoor.settings import Setting

from . import BEHAVIOURS, Behaviour, Job, State, TrainingPlan

DELTA = Setting("adaptive-delta", 3.0, "Delta within which the aw-aware attacker clips its last conv layer.", "attack",
                low=0.0, low_open=True, added=False)


@torch.no_grad()
def clip_weights(weight: torch.Tensor, delta: float) -> None:
    """Clamp weights in place into mu +/- delta * sigma of those weights."""
    mu, sigma = weight.mean(), weight.std(unbiased=False)
    weight.clamp_(float(mu - delta * sigma), float(mu + delta * sigma))


@BEHAVIOURS.register("aw-aware", settings=(DELTA,), role="adaptive")
class AwAware(Behaviour):
    """Clips its last conv layer during training and in the model it submits."""

    def training(self, job: Job, plan: TrainingPlan, model: nn.Module, mask: NeuronMask | None) -> TrainingPlan:
        if not job.attacking:
            return plan
        delta = DELTA.of(self.cfg)
        self.layer = str(model.last_conv)
        return plan.but(after_step=lambda m: clip_weights(m.get_submodule(str(m.last_conv)).weight, delta))

    def submit(self, job: Job, global_state: State, local: State) -> State:
        if job.attacking:  # the training hook of this job named the layer
            clip_weights(local[f"{self.layer}.weight"], DELTA.of(self.cfg))
        return local
