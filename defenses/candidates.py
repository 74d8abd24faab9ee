"""Candidate cleansing steps measured before one is chosen: pruning levels and AW Deltas.

The server (on its validation set) and the clients (on their local data) measure
candidates with the same code: each context manager changes the model, yields, and
restores it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from fl_backdoor.masks import current_mask, install_mask, mask_on
from fl_backdoor.training import layer_weight

from .extreme_weights import WeightStats, zero_extreme_weights
from .neuron_ranking import mask_for


@contextmanager
def pruned(model: nn.Module, order: Sequence[int], count: int, layer: str, size: int) -> Iterator[nn.Module]:
    """The model with the first ``count`` neurons of ``order`` pruned on top of its current mask."""
    previous = current_mask(model)
    install_mask(model, mask_for(order, count, layer, size, previous))
    try:
        yield model
    finally:
        install_mask(model, previous)


@contextmanager
def extreme_weights_zeroed(model: nn.Module, layer: str, stats: WeightStats, delta: float) -> Iterator[int]:
    """The model with AW at ``delta`` applied to its kept neurons; yields the number of weights zeroed."""
    weight = layer_weight(model, layer)
    saved = weight.detach().clone()
    try:
        yield zero_extreme_weights(model, layer, stats, delta, mask_on(current_mask(model), layer))
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def pruning_accuracies(model: nn.Module, order: Sequence[int], levels: Sequence[int], layer: str, size: int,
                       measure: Callable[[nn.Module], float]) -> list[float]:
    """Accuracy at every pruning level."""
    out = []
    for count in levels:
        with pruned(model, order, count, layer, size):
            out.append(measure(model))
    return out


def aw_accuracies(model: nn.Module, layer: str, stats: WeightStats, deltas: Sequence[float],
                  measure: Callable[[nn.Module], float]) -> list[float]:
    """Accuracy at every Delta."""
    out = []
    for delta in deltas:
        with extreme_weights_zeroed(model, layer, stats, delta):
            out.append(measure(model))
    return out
