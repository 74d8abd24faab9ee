"""Adjusting extreme weights (AW, Sec. IV-C): zero the weights of a layer outside mu +/- Delta*sigma.

mu and sigma are the mean and standard deviation of the layer's weights, computed
once over the neurons that are not pruned (pruned neurons are no longer part of the
model).  The adaptive search starts from a large Delta and shrinks it by a step while
clean accuracy stays above a threshold, keeping the smallest Delta that passed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .masks import NeuronMask


@dataclass(frozen=True)
class WeightStats:
    """mu and sigma of a layer's (unpruned) weights."""

    mu: float
    sigma: float


def weight_stats(weight: torch.Tensor, mask: NeuronMask | None = None) -> WeightStats:
    """Mean and (population) standard deviation over the rows of kept neurons."""
    rows = weight.detach().double()
    if mask is not None and mask.pruned:
        rows = rows[mask.keep(rows.device).bool()]
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
    weight = model.get_submodule(layer).weight
    extreme = extreme_mask(weight, stats, delta, mask)
    weight[extreme] = 0.0
    return int(extreme.sum())


def delta_schedule(start: float, step: float, minimum: float) -> list[float]:
    """start, start - step, ... down to minimum (inclusive, within rounding)."""
    count = int(np.floor((start - minimum) / step + 1e-9)) + 1
    return [round(start - i * step, 10) for i in range(count)]
