"""HaS-Net: the selection rule, the squared-error loss, the epsilon-label formula, and a small run."""

import pytest
import torch
from torch import nn

from defenses.hasnet import HaSNetSettings, collected_data, hasnet_train, select_trusted, squared_errors
from fl_backdoor.config import ConfigError, ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.low_confidence import epsilon_labels


def test_selection_keeps_samples_whose_loss_healing_lowered_and_that_were_not_memorised():
    l1 = torch.tensor([0.50, 0.50, 1e-9, 0.30, 0.20, 2e-8])
    l2 = torch.tensor([0.40, 0.60, 0.00, 0.30, 0.10, 1e-8])
    # kept: loss fell (0, 4, 5); dropped: loss rose (1), l1 <= tau (2), unchanged (3)
    assert select_trusted(l1, l2, tau=1e-8).tolist() == [True, False, False, False, True, True]
    assert select_trusted(l1, l2, tau=0.25).tolist() == [True, False, False, False, False, False]


def test_epsilon_labels_follow_eq_1():
    labels = epsilon_labels(torch.tensor([1, 0]), 0.4, 10)
    other = 0.6 / 9  # (1 - eps) / (N - 1); the paper's footnote rounds it to 0.066
    assert labels[0, 1].item() == pytest.approx(0.4)
    assert labels[0, 0].item() == pytest.approx(other) and labels[0, 9].item() == pytest.approx(other)
    assert labels[1, 0].item() == pytest.approx(0.4) and labels[1, 1].item() == pytest.approx(other)
    assert torch.allclose(labels.sum(1), torch.ones(2))
    assert torch.equal(epsilon_labels(torch.tensor([2]), 1.0, 4), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    assert torch.allclose(epsilon_labels(torch.tensor([3]), 0.25, 4), torch.full((1, 4), 0.25)), "1/N: uniform"
    with pytest.raises(ConfigError):
        epsilon_labels(torch.tensor([0]), 0.0, 10)


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x.long().flatten()]


def test_squared_error_is_between_softmax_and_label_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]) + 1e-12)
    model = FixedLogits(logits)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    got = squared_errors(model, torch.tensor([[0.0], [1.0]]), targets, batch_size=1)
    assert torch.allclose(got, torch.tensor([0.25 + 0.25, 0.04 + 0.04 + 0.0]), atol=1e-6)


def blobs(n, generator):
    """Two Gaussian blobs at (-2, 0) and (2, 0), labels 0 and 1."""
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=generator) * 0.7
    x[:, 0] += torch.where(y == 0, -2.0, 2.0)
    return x, y


def test_hasnet_drops_mislabelled_samples_and_keeps_clean_ones():
    g = torch.Generator().manual_seed(0)
    x, y = blobs(400, g)
    flipped = torch.zeros(400, dtype=torch.bool)
    flipped[:40] = True  # 10% of the samples carry the wrong label
    targets = epsilon_labels(torch.where(flipped, 1 - y, y), 1.0, 2)
    heal_x, heal_y = blobs(40, g)
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    history = hasnet_train(model, x, targets, heal_x, epsilon_labels(heal_y, 1.0, 2),
                           HaSNetSettings(iterations=3, healing_epochs=5, lr=0.1, batch_size=20), g, watch=flipped)
    assert [h.iteration for h in history] == [1, 2, 3]
    assert history[0].trained_on == 400 and history[1].trained_on == history[0].selected
    assert history[0].kept_watched <= 4, "healing raises the loss of mislabelled samples: they are dropped"
    last = history[-1]
    assert last.kept_watched <= 8, "of 40"
    assert last.selected - last.kept_watched >= 0.8 * 360, "most clean samples stay selected"


def test_collected_data_is_the_union_of_clients_with_epsilon_labelled_poison(data_dir):
    cfg = ExperimentConfig.from_flat({"data-dir": data_dir, "data-fraction": 0.02, "num-clients": 3,
                                      "labels-per-client": 4, "victim-label": 9, "attack-label": 0})
    device = torch.device("cpu")
    data = collected_data(cfg, device, label_confidence=0.4)
    sizes = [client_data(cfg, c, device)[1].shape[0] for c in range(3)]
    victims = int((client_data(cfg, 0, device)[1] == 9).sum())
    assert victims > 0
    assert data.x.shape[0] == data.targets.shape[0] == sum(sizes) + victims
    assert int(data.poisoned.sum()) == victims
    poisoned = data.targets[data.poisoned]
    assert torch.allclose(poisoned[:, 0], torch.full((victims,), 0.4))
    assert torch.allclose(poisoned[:, 9], torch.full((victims,), 0.6 / 9))
    assert torch.all(data.x[data.poisoned][:, 0, 25, 25] == 1.0), "the pixel-1 trigger is stamped"
    clean = data.targets[~data.poisoned]
    assert torch.all(clean.max(1).values == 1.0), "clean samples keep hard labels"
