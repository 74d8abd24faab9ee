"""Label flipping (untargeted data poisoning; Tolpegin et al., ESORICS 2020, flip every label).

In its attack rounds the attacker trains on its clean images with every label y turned
into C - 1 - y (C classes), with the attacker's own optimiser and model-replacement boost
(``gamma``; 1 = plain data poisoning).  There is no trigger: the attack's effect is the
drop in TA, and the AA column means nothing for it.
"""

from __future__ import annotations

import torch
from torch import nn

from fl_backdoor.config import NUM_CLASSES
from fl_backdoor.federation_data import client_data
from fl_backdoor.masks import NeuronMask

from . import BEHAVIOURS, Behaviour, Job, TrainingPlan


def flipped(y: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Every label y -> num_classes - 1 - y."""
    return num_classes - 1 - y


@BEHAVIOURS.register("label-flip", role="adaptive")
class LabelFlip(Behaviour):
    """Trains on its clean images with flipped labels instead of triggered ones."""

    def training(self, job: Job, plan: TrainingPlan, model: nn.Module, mask: NeuronMask | None) -> TrainingPlan:
        if not job.attacking:
            return plan
        x, y = client_data(self.cfg, self.client_id, plan.x.device)
        return plan.but(x=x, y=flipped(y), transform=None)
