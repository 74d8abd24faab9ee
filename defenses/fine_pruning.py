"""Fine-Pruning (Liu, Dolan-Gavitt and Garg, RAID 2018), centralized on the server's clean set.

The channels of one layer (the last conv layer by default) are pruned in increasing
order of their mean activation on the clean set until clean accuracy would fall more
than ``max_drop`` below the unpruned model's; the pruned model is then fine-tuned on the
same clean set.  Pruned channels are silenced by a persistent mask (fl_backdoor.masks), so
fine-tuning cannot revive them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_backdoor.masks import NeuronMask, current_mask, install_mask, mask_on
from fl_backdoor.models import layer_neurons, resolve_layer
from fl_backdoor.training import SGDSettings, accuracy, train

from .candidates import pruned
from .neuron_ranking import mask_for, mean_activations, pruning_levels
from .stop_rules import last_passing

# Liu et al. stop pruning once validation accuracy has dropped by 4 points.
MAX_DROP = 0.04


@dataclass(frozen=True)
class FinePruningResult:
    """What Fine-Pruning did: the mask, how many channels, and the clean accuracies it saw."""

    mask: NeuronMask
    pruned: int
    clean_before: float
    clean_pruned: float
    clean_after: float


def dormancy_order(activations: np.ndarray) -> list[int]:
    """Neurons from least to most active (ties: lower index first)."""
    return [int(i) for i in np.argsort(np.asarray(activations, dtype=np.float64), kind="stable")]


def fine_pruning(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: SGDSettings,
                 generator: torch.Generator, *, layer: str = "", max_drop: float = MAX_DROP) -> FinePruningResult:
    """Prune ``layer`` of ``model`` in place on the clean set (x, y), then fine-tune it."""
    layer = resolve_layer(model, layer)
    size = layer_neurons(model, layer)
    order = dormancy_order(mean_activations(model, layer, x))
    base = accuracy(model, x, y)

    def accuracy_with(count: int) -> float:
        with pruned(model, order, count, layer, size):
            return accuracy(model, x, y)

    chosen, seen = last_passing(pruning_levels(size - 1), accuracy_with, base - max_drop)
    count = chosen or 0
    mask = mask_for(order, count, layer, size, mask_on(current_mask(model), layer))
    install_mask(model, mask)
    clean_pruned = dict(seen).get(count, base)
    train(model, x, y, settings, generator)
    return FinePruningResult(mask, count, base, clean_pruned, accuracy(model, x, y))
