"""Attack 1 of Sec. VI-B: the attacker reports its backdoor neurons as the most active.

It finds the neurons the trigger excites most above clean data, so RAP ranks them
last for pruning and its MVP votes keep them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from defenses.neuron_ranking import mean_activations
from fl_backdoor.attacks import attacker_trigger

from . import BEHAVIOURS, Behaviour


def manipulated_activations(clean: np.ndarray, excess: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """The neurons the trigger excites most are reported as more active than any other."""
    count = max(1, round(fraction * len(clean)))
    backdoor = np.argsort(-excess, kind="stable")[:count]
    reported = clean.copy()
    reported[backdoor] = clean.max() + 1.0 + excess[backdoor] - excess[backdoor].min()
    return reported


@BEHAVIOURS.register("rank-manipulation", role="adaptive")
class RankManipulation(Behaviour):
    """Reports manipulated activations in federated pruning."""

    def activations(self, model: nn.Module, layer: str, x: torch.Tensor, measured: np.ndarray) -> np.ndarray:
        triggered = attacker_trigger(self.cfg, self.client_id).apply(x)
        excess = mean_activations(model, layer, triggered, self.cfg.eval_batch_size) - measured
        return manipulated_activations(measured, excess)
