"""Adjusting extreme weights (AW, Sec. IV-C): zero the weights of a layer outside mu +/- Delta*sigma.

mu and sigma are the mean and standard deviation of the layer's weights, computed
once: over "all the weights in the last convolutional layer" (Sec. IV-C), a pruned
neuron's weights counted as the zeros that pruning by zeroing leaves, or over the
kept neurons' weights only.  Only kept neurons' weights are ever zeroed.  The adaptive
search (server_strategies.cleansing) starts from a large Delta and shrinks it until
clean accuracy drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_backdoor.masks import NeuronMask
from fl_backdoor.training import layer_weight


@dataclass(frozen=True)
class WeightStats:
    """mu and sigma of a layer's (unpruned) weights."""

    mu: float
    sigma: float


def weight_stats(weight: torch.Tensor, mask: NeuronMask | None = None, scope: str = "kept") -> WeightStats:
    """Mean and (population) standard deviation of the layer's weights.

    ``scope`` "kept": over the rows of kept neurons; "all": over every row, the rows
    of pruned neurons counted as zeros.
    """
    rows = weight.detach().double()
    if mask is not None and mask.pruned:
        keep = mask.keep(rows.device).bool()
        if scope == "kept":
            rows = rows[keep]
        else:
            rows = rows * keep.view(-1, *([1] * (rows.dim() - 1)))
    return WeightStats(float(rows.mean()), float(rows.std(unbiased=False)))


def extreme_mask(weight: torch.Tensor, stats: WeightStats, delta: float,
                 mask: NeuronMask | None = None) -> torch.Tensor:
    """True where a kept neuron's weight lies outside [mu - delta*sigma, mu + delta*sigma]."""
    w = weight.detach().double()
    extreme = (w < stats.mu - delta * stats.sigma) | (w > stats.mu + delta * stats.sigma)
    if mask is not None and mask.pruned:
        extreme[~mask.keep(w.device).bool()] = False
    return extreme


@torch.no_grad()
def zero_extreme_weights(model: nn.Module, layer: str, stats: WeightStats, delta: float,
                         mask: NeuronMask | None = None) -> int:
    """Zero the layer's extreme weights in place; returns how many weights that is."""
    weight = layer_weight(model, layer)
    extreme = extreme_mask(weight, stats, delta, mask)
    weight[extreme] = 0.0
    return int(extreme.sum())


def delta_schedule(start: float, step: float, minimum: float) -> list[float]:
    """start, start - step, ... down to minimum (inclusive, within rounding)."""
    count = int(np.floor((start - minimum) / step + 1e-9)) + 1
    return [round(start - i * step, 10) for i in range(count)]
