"""Candidate cleansing steps measured before one is chosen: pruning levels and AW Deltas.

The server (on its validation set) and the clients (on their local data) measure
candidates with the same code: each context manager changes the model, yields, and
restores it.  A client measures its whole data set at every candidate, so it runs the
part of a chain model before the changed module once (``candidate_measure``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from fl_backdoor.masks import current_mask, install_mask, mask_on
from fl_backdoor.models.chain import ChainNet
from fl_backdoor.training import accuracy, layer_weight

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


def candidate_measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                      first: str) -> Callable[[nn.Module], float]:
    """``accuracy`` of ``model`` on (x, y), for candidates that change only ``first`` and what runs after it.

    For a chain model the part before ``first`` runs here, once; each call runs the rest on its
    stored outputs, with the same batches, so it returns what ``accuracy(model, x, y)`` would,
    bit for bit.  Other models are measured whole.  The measure is only valid for ``model``.
    """
    def mine(m: nn.Module) -> None:
        if m is not model:
            raise ValueError("candidate_measure: the measure belongs to another model")

    if not (isinstance(model, ChainNet) and y.shape[0]):
        def whole(m: nn.Module) -> float:
            mine(m)
            return accuracy(model, x, y, batch_size)
        return whole
    head, tail = model.cut_before(first)
    model.eval()
    with torch.no_grad():
        heads = [head(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]

    def cut(m: nn.Module) -> float:
        mine(m)
        model.eval()
        with torch.no_grad():
            return float((torch.cat([tail(h).argmax(1) for h in heads]) == y).float().mean())
    return cut


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
