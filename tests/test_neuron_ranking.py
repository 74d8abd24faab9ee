"""RAP and MVP on hand-made numbers, ties included."""

import numpy as np
import torch
from torch import nn

from defenses.neuron_ranking import (
    local_ranking,
    local_votes,
    mask_for,
    mean_activations,
    mvp_order,
    pruning_levels,
    rap_order,
    votes_to_prune,
)


def test_local_ranking_is_a_permutation_most_active_first_ties_by_index():
    assert local_ranking([0.5, 2.0, 0.0, 1.0]) == [3, 1, 4, 2]
    assert local_ranking([1.0, 0.0, 1.0, 0.0]) == [1, 3, 2, 4]  # ties: lower index ranks as more active
    assert sorted(local_ranking(np.random.default_rng(0).random(50))) == list(range(1, 51))


def test_local_votes_mark_exactly_p_times_P_most_dormant():
    acts = [0.9, 0.1, 0.5, 0.0, 0.3, 0.7]
    assert local_votes(acts, 0.5) == [0, 1, 0, 1, 1, 0]
    assert sum(local_votes(acts, 0.34)) == votes_to_prune(0.34, 6) == 2
    assert local_votes([0.0, 0.0, 0.0, 1.0], 0.5) == [0, 1, 1, 0]  # tie among dormant: higher index more dormant


def test_rap_aggregates_mean_rank_most_dormant_first():
    rankings = [[1, 2, 3, 4], [2, 1, 4, 3], [1, 3, 4, 2]]
    # mean ranks: n0 1.33, n1 2.0, n2 3.67, n3 3.0
    assert rap_order(rankings) == [2, 3, 1, 0]
    # ties in the mean: lower index pruned first
    assert rap_order([[1, 2, 3, 4], [4, 3, 2, 1]]) == [0, 1, 2, 3]


def test_mvp_keeps_only_strict_majorities_ordered_by_count():
    votes = [[1, 1, 0, 0, 1],
             [1, 0, 1, 0, 1],
             [1, 1, 0, 0, 0],
             [0, 1, 1, 0, 1]]
    # counts 3, 3, 2, 0, 3 -> strict majority of 4 needs 3: neurons 0, 1, 4 (ties by index)
    assert mvp_order(votes) == [0, 1, 4]
    assert mvp_order([[1, 0], [0, 1]]) == [], "a 1-1 split is no majority"


def test_a_minority_cannot_change_mvp():
    honest = [[1, 1, 0, 0]] * 7
    liars = [[0, 0, 1, 1]] * 3
    assert mvp_order(honest + liars) == [0, 1]


def test_mask_for_and_levels():
    mask = mask_for([4, 2, 7, 1], 2, "layer", 8)
    assert mask.pruned == (2, 4) and mask.keep().tolist() == [1, 1, 0, 1, 0, 1, 1, 1]
    assert pruning_levels(5, 128) == [0, 1, 2, 3, 4, 5]
    grid = pruning_levels(511, 64)
    assert grid[0] == 0 and grid[-1] == 511 and len(grid) == 65


def test_mean_activations_over_samples_and_positions():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1, bias=False)
            self.relu = nn.ReLU()
            self.neuron_outputs = {"conv": "relu"}

        def forward(self, x):
            return self.relu(self.conv(x)).sum()

    net = Net()
    with torch.no_grad():
        net.conv.weight[:] = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    x = torch.tensor([[[[1.0, 3.0]]], [[[-2.0, 2.0]]]])  # 2 samples, 1x2 pixels
    acts = mean_activations(net, "conv", x, batch_size=1)
    # channel 0: relu(x) mean over 4 values = (1+3+0+2)/4; channel 1: relu(-x) = (0+0+2+0)/4
    assert np.allclose(acts, [1.5, 0.5])
