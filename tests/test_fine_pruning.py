"""Fine-Pruning on a hand-made network whose channel activations and accuracies are known."""

import torch
from torch import nn

from defenses.fine_pruning import dormancy_order, fine_pruning
from fl_backdoor.training import SGDSettings


def test_dormancy_order_is_least_active_first_ties_by_index():
    assert dormancy_order([0.5, 0.0, 0.2, 0.0]) == [1, 3, 2, 0]


class TwoFeatureNet(nn.Module):
    """1x1 conv with 4 channels: 0 is dormant on positive inputs, 1 barely active and useless,
    2 and 3 carry classes 0 and 1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[-1.0, -1.0], [0.01, 0.01], [1.0, 0.0], [0.0, 1.0]]).view(4, 2, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]))
            self.fc.bias.zero_()
        self.last_conv = "conv"
        self.neuron_outputs = {"conv": "relu"}

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


def data():
    x = torch.tensor([[1.0, 0.1], [0.1, 1.0]]).repeat(10, 1).view(20, 2, 1, 1)
    return x, torch.tensor([0, 1]).repeat(10)


def test_prunes_dormant_channels_until_accuracy_would_drop_then_keeps_them_silent():
    model, (x, y) = TwoFeatureNet(), data()
    # activations: ch0 0, ch1 0.011, ch2 = ch3 = 0.55 -> order 0, 1, 2, 3; pruning ch2 costs half the accuracy
    result = fine_pruning(model, x, y, SGDSettings(lr=0.5, epochs=3, batch_size=4), torch.Generator().manual_seed(0),
                          max_drop=0.04)
    assert result.pruned == 2 and result.mask.pruned == (0, 1) and result.mask.layer == "conv"
    assert result.clean_before == result.clean_pruned == 1.0
    seen = {}
    model.relu.register_forward_hook(lambda m, i, o: seen.setdefault("a", o.detach()))
    model(x)
    assert torch.all(seen["a"][:, [0, 1]] == 0), "pruned channels stay silent after fine-tuning"
    assert result.clean_after == 1.0


def test_a_loose_accuracy_bound_prunes_further():
    model, (x, y) = TwoFeatureNet(), data()
    result = fine_pruning(model, x, y, SGDSettings(lr=0.0, epochs=1, batch_size=4), torch.Generator().manual_seed(0),
                          max_drop=0.5)
    assert result.mask.pruned == (0, 1, 2) and result.clean_pruned == 0.5
