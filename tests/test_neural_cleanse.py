"""Neural Cleanse: the MAD anomaly index on hand-made norms, trigger reversal on a hand-made
backdoored model, and the unlearning batches."""

import numpy as np
import pytest
import torch
from torch import nn

from defenses.neural_cleanse import (
    NCSettings,
    ReversedTriggers,
    TriggerStamper,
    anomaly_indices,
    flagged_classes,
    reverse_triggers,
)


def test_anomaly_index_is_the_deviation_from_the_median_in_units_of_1_4826_mad():
    norms = np.array([10.0, 11.0, 9.0, 10.0, 2.0, 12.0, 10.0, 9.0, 11.0, 10.0])
    # median 10; absolute deviations 0,1,1,0,8,2,0,1,1,0 -> their median (MAD) is 1
    index = anomaly_indices(norms)
    assert index[4] == pytest.approx(8 / 1.4826)
    assert index[5] == pytest.approx(2 / 1.4826) and index[0] == 0.0
    assert flagged_classes(norms, threshold=2.0) == [4]
    large = norms.copy()
    large[7] = 40.0  # an outlier above the median is not a backdoor target
    assert anomaly_indices(large)[7] > 2 and flagged_classes(large, 2.0) == [4]
    assert flagged_classes(norms, threshold=6.0) == [], "5.4 is below this threshold"


def test_two_small_norms_are_flagged_smallest_first_and_a_zero_mad_is_handled():
    norms = np.array([20.0, 21.0, 3.0, 19.0, 20.0, 22.0, 1.0, 20.0, 18.0, 21.0])
    assert flagged_classes(norms, 2.0) == [6, 2]
    same = np.array([5.0, 5.0, 5.0, 1.0])
    assert anomaly_indices(same).tolist() == [0.0, 0.0, 0.0, np.inf]
    assert flagged_classes(same, 2.0) == [3]


class BlockModel(nn.Module):
    """Class k's logit is 10 x the mean of its own 4x4 block, except class 3, which is also
    driven by one pixel: a one-pixel backdoor to class 3."""

    def __init__(self):
        super().__init__()
        weights = torch.zeros(10, 16, 16)
        for k in range(10):
            r, c = divmod(k, 4)
            weights[k, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 10.0 / 16
        weights[3, 13, 13] = 30.0
        self.weights = nn.Parameter(weights.flatten(1))

    def forward(self, x):
        return x.flatten(1) @ self.weights.t()


def test_the_backdoor_target_has_the_smallest_reversed_trigger_and_is_flagged():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 16, 16, generator=g) * 0.2
    model = BlockModel()
    y = model(x).argmax(1)
    before = model.weights.detach().clone()
    triggers = reverse_triggers(model, x, y, 10, NCSettings(steps=300, lr=0.1, l1=0.01, batch_size=32), g)
    assert int(np.argmin(triggers.norms)) == 3
    assert triggers.norms[3] < 3 and np.median(triggers.norms) > 5
    assert triggers.success[3] > 0.9
    assert flagged_classes(triggers.norms, 2.0) == [3]
    assert torch.equal(model.weights.detach(), before), "reversal does not train the model"


def test_unlearning_batches_carry_the_reversed_trigger_with_true_labels():
    masks = torch.zeros(2, 1, 2, 2)
    masks[1, 0, 0, 0] = 1.0
    patterns = torch.full((2, 1, 2, 2), 0.5)
    triggers = ReversedTriggers(masks, patterns, np.array([4.0, 1.0]), np.zeros(2), [0, 1])
    xb, yb = torch.zeros(10, 1, 2, 2), torch.arange(10)
    xb, yb = TriggerStamper(triggers, [1], fraction=0.2)(xb, yb)
    assert torch.equal(yb, torch.arange(10))
    assert xb[:2, 0, 0, 0].tolist() == [0.5, 0.5] and xb[2:].abs().sum() == 0 and xb[:2, 0, 1].abs().sum() == 0
