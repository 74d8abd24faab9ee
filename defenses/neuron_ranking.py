"""Federated pruning arithmetic (Sec. IV-A, Algorithm 1): activations, local ranks and votes,
their aggregation on the server, and the accuracy-bounded pruning loop.

Conventions (the paper's, made exact):

* a client ranks neurons in decreasing order of mean activation: rank 1 is the most
  active neuron, rank P the most dormant; equal activations are ranked by neuron
  index (lower index = more active), so a ranking is always a permutation of 1..P;
* an MVP vote is 1 for each of the client's round(p * P) most dormant neurons
  (marked for pruning) and 0 otherwise;
* RAP prunes in decreasing order of mean rank (most dormant first), MVP in
  decreasing order of vote count, restricted to neurons a strict majority voted to
  prune; ties go to the lower neuron index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fl_backdoor.masks import NeuronMask, neuron_output_module


@torch.no_grad()
def mean_activations(model: nn.Module, layer: str, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Mean activation of each neuron of ``layer`` over the samples (and positions) of x."""
    module = neuron_output_module(model, layer)
    total: list[torch.Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        dims = [0] + list(range(2, output.dim()))
        total.append(output.double().mean(dim=dims) * output.shape[0])

    handle = module.register_forward_hook(record)
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            model(x[start:start + batch_size])
    finally:
        handle.remove()
    return (torch.stack(total).sum(0) / max(x.shape[0], 1)).cpu().numpy()


def local_ranking(activations: Sequence[float] | np.ndarray) -> list[int]:
    """Rank position of every neuron: 1 = most active, P = most dormant (ties by index)."""
    act = np.asarray(activations, dtype=np.float64)
    order = sorted(range(len(act)), key=lambda i: (-act[i], i))
    ranks = [0] * len(act)
    for position, neuron in enumerate(order, start=1):
        ranks[neuron] = position
    return ranks


def votes_to_prune(rate: float, size: int) -> int:
    """How many neurons each MVP client marks: round(p * P)."""
    return round(rate * size)


def local_votes(activations: Sequence[float] | np.ndarray, rate: float) -> list[int]:
    """1 for the round(p * P) most dormant neurons (to prune), 0 for the others."""
    ranks = local_ranking(activations)
    size = len(ranks)
    cut = size - votes_to_prune(rate, size)
    return [1 if r > cut else 0 for r in ranks]


def rap_order(rankings: Sequence[Sequence[int]]) -> list[int]:
    """Pruning order of RAP: neurons by decreasing mean rank R_i (ties: lower index first)."""
    mean = np.mean(np.asarray(rankings, dtype=np.float64), axis=0)
    return sorted(range(len(mean)), key=lambda i: (-mean[i], i))


def mvp_order(votes: Sequence[Sequence[int]]) -> list[int]:
    """Pruning order of MVP: neurons a strict majority voted for, by decreasing count (ties: index)."""
    counts = np.sum(np.asarray(votes, dtype=np.int64), axis=0)
    clients = len(votes)
    candidates = [i for i in range(len(counts)) if 2 * counts[i] > clients]
    return sorted(candidates, key=lambda i: (-counts[i], i))


MAX_PRUNING_LEVELS = 128  # accuracy evaluations of a pruning search at most (an even grid beyond that)


def pruning_levels(limit: int, max_levels: int = MAX_PRUNING_LEVELS) -> list[int]:
    """Numbers of pruned neurons to try: every count 0..limit, or an even grid of max_levels+1."""
    if limit <= max_levels:
        return list(range(limit + 1))
    return sorted({round(v) for v in np.linspace(0, limit, max_levels + 1).tolist()})


def mask_for(order: Sequence[int], count: int, layer: str, size: int, base: NeuronMask | None = None) -> NeuronMask:
    """The mask pruning the first ``count`` neurons of ``order`` (plus any already pruned)."""
    pruned = set(base.pruned) if base else set()
    pruned.update(order[:count])
    return NeuronMask(layer, size, tuple(sorted(pruned)))
