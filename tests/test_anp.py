"""ANP: the perturbation box, the mask box, which parameters stand for a neuron, and pruning."""

import copy

import pytest
import torch

from defenses.anp import (
    AdversarialNeuronPruning,
    ANPSettings,
    PruningRule,
    anp_prune,
    apply_pruning,
    neuron_units,
    pgd_step,
    prune_by_fraction,
    prune_by_threshold,
)
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.models import build_model

FASHION = {"dataset": "fashion-mnist", "model-widths": "4,6,8"}
VGG = {"dataset": "cifar10", "model": "vgg11", "model-widths": "4,4,6,6,8,8,8,8"}
RESNET = {"dataset": "cifar10", "model": "resnet18-slim", "model-widths": "4,4,6,6"}


def model_and_batch(values, n=6, seed=0):
    torch.manual_seed(seed)
    cfg = ExperimentConfig.from_flat(values)
    size, channels = (32, 3) if cfg.dataset == "cifar10" else (28, 1)
    model = build_model(cfg).eval()
    return model, torch.rand(n, channels, size, size), torch.randint(0, 10, (n,))


def outputs(model, name, x):
    seen = {}
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach()))
    model(x)
    handle.remove()
    return seen["out"]


def test_pgd_step_moves_by_the_gradient_sign_and_projects_onto_the_eps_box():
    delta = torch.tensor([0.3, -0.3, 0.0, 0.1, -0.1])
    grad = torch.tensor([1.0, -2.0, -0.5, 0.0, 3.0])
    assert torch.allclose(pgd_step(delta, grad, step=0.4, eps=0.4), torch.tensor([0.4, -0.4, -0.4, 0.1, 0.3]))
    assert torch.allclose(pgd_step(delta, grad, step=0.1, eps=0.4), torch.tensor([0.4, -0.4, -0.1, 0.1, 0.0]))


def test_units_are_conv_channels_and_hidden_fc_units_without_batchnorm():
    model, x, _ = model_and_batch(FASHION)
    units = neuron_units(model, x)
    assert [(u.layer, u.size, u.weight, u.bias) for u in units] == [
        ("features.conv1", 4, "features.conv1.weight", "features.conv1.bias"),
        ("features.conv2", 6, "features.conv2.weight", "features.conv2.bias"),
        ("features.conv3", 8, "features.conv3.weight", "features.conv3.bias"),
        ("classifier.fc1", 128, "classifier.fc1.weight", "classifier.fc1.bias")], "the output layer is excluded"


@pytest.mark.parametrize("values", [VGG, RESNET])
def test_with_batchnorm_the_units_are_the_bn_scale_and_shift(values):
    model, x, _ = model_and_batch(values, n=2)
    units = neuron_units(model, x)
    bns = [name for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [u.layer for u in units] == bns, "every BN (shortcut BNs included), in execution order"
    assert all(u.weight == f"{u.layer}.weight" and u.bias == f"{u.layer}.bias" for u in units)


@pytest.mark.parametrize("values", [FASHION, VGG])
@pytest.mark.parametrize("steps", [1, 3])
def test_perturbations_stay_within_eps(values, steps):
    model, x, y = model_and_batch(values)
    eps = 0.25
    anp = AdversarialNeuronPruning(model, neuron_units(model, x), ANPSettings(eps=eps, steps=steps))
    delta, xi = anp.perturb(x, y, torch.Generator().manual_seed(0))
    values_seen = torch.cat([*delta.values(), *xi.values()])
    assert values_seen.abs().max() <= eps + 1e-7
    # a step of eps / steps from a uniform start overshoots the box for some neurons: the projection is active
    assert (values_seen.abs() == eps).sum() > 0
    assert set(delta) == set(xi) == {u.layer for u in anp.units}


@pytest.mark.parametrize("values", [FASHION, VGG])
def test_masks_stay_in_the_unit_interval_and_the_weights_are_untouched(values):
    model, x, y = model_and_batch(values, n=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    anp = AdversarialNeuronPruning(model, neuron_units(model, x),
                                   ANPSettings(lr=1e4, iterations=5, batch_size=8))
    masks = anp.fit(x, y, torch.Generator().manual_seed(1))
    flat = torch.cat(list(masks.values()))
    assert flat.min() >= 0.0 and flat.max() <= 1.0
    assert (flat == 0.0).sum() > 0, "such a large lr pushes masks below 0: the projection clips them"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "ANP never trains the model"


def test_prune_by_threshold_and_by_fraction_on_hand_made_masks():
    masks = {"a": torch.tensor([0.1, 0.5, 0.2]), "b": torch.tensor([0.0, 0.9])}
    by_threshold = prune_by_threshold(masks, 0.2)
    assert by_threshold["a"].tolist() == [True, False, True] and by_threshold["b"].tolist() == [True, False]
    by_fraction = prune_by_fraction(masks, 0.4)  # 2 of 5: the masks 0.0 and 0.1
    assert by_fraction["a"].tolist() == [True, False, False] and by_fraction["b"].tolist() == [True, False]
    assert sum(int(v.sum()) for v in prune_by_fraction(masks, 1.0).values()) == 5


def test_pruned_conv_channels_and_fc_units_output_only_their_bias():
    model, x, _ = model_and_batch(FASHION)
    units = neuron_units(model, x)
    conv_before = outputs(model, "features.conv2", x)
    pruned = {u.layer: torch.zeros(u.size, dtype=torch.bool) for u in units}
    pruned["features.conv2"][3] = True
    pruned["classifier.fc1"][[5, 7]] = True
    assert apply_pruning(model, units, pruned) == 3
    conv, fc = outputs(model, "features.conv2", x), outputs(model, "classifier.fc1", x)
    bias = model.features.conv2.bias.detach()
    assert torch.allclose(conv[:, 3], bias[3].expand_as(conv[:, 3]))
    assert torch.allclose(fc[:, [5, 7]], model.classifier.fc1.bias.detach()[[5, 7]].expand(x.shape[0], 2))
    assert not torch.allclose(conv_before[:, 3], conv[:, 3]), "the channel did vary before pruning"
    keep = [c for c in range(6) if c != 3]
    assert torch.equal(conv[:, keep], conv_before[:, keep])


def test_pruned_batchnorm_neurons_output_only_their_shift():
    model, x, _ = model_and_batch(VGG, n=4)
    units = neuron_units(model, x)
    pruned = {u.layer: torch.zeros(u.size, dtype=torch.bool) for u in units}
    pruned["features.bn2"][[0, 2]] = True
    conv_weight = model.features.conv2.weight.detach().clone()
    apply_pruning(model, units, pruned)
    out = outputs(model, "features.bn2", x)
    shift = model.features.bn2.bias.detach()
    assert torch.allclose(out[:, [0, 2]], shift[[0, 2]].view(1, 2, 1, 1).expand_as(out[:, [0, 2]]))
    assert torch.equal(model.features.conv2.weight.detach(), conv_weight), "the conv feeding BN is left alone"
    assert out[:, 1].std() > 0


def three_neuron_net():
    """Hidden neuron 0 carries class 1, neuron 1 is useless, neuron 2 carries class 0."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([0.0, 0.1]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(5, 1)
    return net, x, torch.tensor([0, 1]).repeat(5)


@pytest.mark.parametrize("max_drop, expected", [(0.04, [False, True, False]), (0.5, [False, True, True])])
def test_the_max_drop_rule_prunes_smallest_masks_while_clean_accuracy_allows(max_drop, expected):
    net, x, y = three_neuron_net()
    units = neuron_units(net, x)
    assert [u.layer for u in units] == ["0"]
    masks = {"0": torch.tensor([0.9, 0.1, 0.5])}  # pruning order: neuron 1, then 2 (class 0 is lost), then 0
    before = net[0].weight.detach().clone()
    rule = PruningRule("max-drop", max_drop)
    assert rule.select(net, units, masks, x, y)["0"].tolist() == expected
    assert torch.equal(net[0].weight.detach(), before), "trying candidates leaves the model as it was"
    result = anp_prune(net, units, masks, rule, x, y)
    assert result.count == sum(expected) and result.per_layer() == {"0": sum(expected)}
    assert torch.equal(net[0].weight.detach()[torch.tensor(expected)], torch.zeros(sum(expected), 2))


def test_pruning_rules_by_name():
    net, x, y = three_neuron_net()
    units, masks = neuron_units(net, x), {"0": torch.tensor([0.9, 0.1, 0.5])}
    assert PruningRule().describe() == "threshold 0.2"
    assert PruningRule("threshold", 0.5).select(net, units, masks, x, y)["0"].tolist() == [False, True, True]
    assert PruningRule("fraction", 0.34).select(net, units, masks, x, y)["0"].tolist() == [False, True, False]
    assert PruningRule("max-drop", 0.04).describe() == "clean drop <= 4 pts"
    with pytest.raises(ValueError):
        PruningRule("magic", 1.0)


def test_the_max_drop_search_tries_at_most_129_counts_on_a_wide_layer():
    """A VGG has thousands of neurons: the search walks an even grid of counts, not every count."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 2))
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    units = neuron_units(net, x)
    masks = {"0": torch.linspace(0.0, 1.0, 1000)}
    calls = []
    real_forward = net.forward
    net.forward = lambda inp: calls.append(1) or real_forward(inp)
    selected = PruningRule("max-drop", 1.0).select(net, units, masks, x, y)["0"]  # accuracy can never fall 100 points
    assert len(calls) == 1 + 129  # the unpruned base, then the grid 0, 8, 16, 23, ..., 999
    assert int(selected.sum()) == 999 and not bool(selected[-1]), "the largest grid count, the biggest mask kept"


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_norm_normalises_with_the_batch_as_the_references_run_it_and_dropout_stays_off(mode):
    """ANP's loss is the network's with batch norm on the batch's own statistics (train, the default: the
    reference codes' mode) or on its running ones (eval); dropout stays off either way, and the caller's running
    statistics do not move."""
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(3 * 4 * 4, 4))
    x, y = torch.randn(8, 1, 6, 6) * 3 + 1, torch.tensor([0, 1, 2, 3] * 2)
    assert ANPSettings().batch_norm == "train"
    anp = AdversarialNeuronPruning(model, neuron_units(model, x), ANPSettings(batch_norm=mode))
    masks = {u.layer: torch.ones(u.size) for u in anp.units}
    reference = copy.deepcopy(model).eval()
    reference[1].train(mode == "train")
    with torch.no_grad():
        expected = F.cross_entropy(reference(x), y)
        assert torch.allclose(anp._loss(x, y, masks, None), expected, atol=1e-6)
        assert not torch.allclose(expected, F.cross_entropy(copy.deepcopy(model).eval()(x), y)) or mode == "eval"
    assert not anp.model[4].training and anp.model[1].training == (mode == "train")
    assert torch.equal(model[1].running_mean, torch.zeros(3)), "the caller's statistics stay"
    with pytest.raises(ValueError, match="batch_norm: 'eval' or 'train', not 'both'"):
        ANPSettings(batch_norm="both")
