"""Masks zero the chosen neurons and keep them at zero; AW zeroes exactly the extreme weights."""

import pytest
import torch

from clients.local_training import run_local_job
from defenses.candidates import aw_accuracies, candidate_measure, extreme_weights_zeroed, pruned, pruning_accuracies
from defenses.extreme_weights import delta_schedule, extreme_mask, weight_stats, zero_extreme_weights
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.masks import NeuronMask, install_mask
from fl_backdoor.models import build_model, layer_neurons
from fl_backdoor.training import accuracy, layer_weight


def activations(model, layer, x):
    out = {}
    handle = model.get_submodule(model.neuron_outputs[layer]).register_forward_hook(
        lambda m, i, o: out.setdefault("a", o.detach()))
    model(x)
    handle.remove()
    return out["a"]


@pytest.mark.parametrize("values", [{"dataset": "fashion-mnist"},
                                    {"dataset": "cifar10", "model": "resnet18-slim"},
                                    {"dataset": "cifar10", "model": "vgg11"}])
def test_mask_zeroes_exactly_the_pruned_channels(values):
    cfg = ExperimentConfig.from_flat(values)
    model = build_model(cfg).eval()
    layer = model.last_conv
    size = 3 if cfg.dataset == "cifar10" else 1
    x = torch.rand(4, size, 28 if size == 1 else 32, 28 if size == 1 else 32)
    before = activations(model, layer, x)
    n = before.shape[1]
    install_mask(model, NeuronMask(layer, n, (0, 5, n - 1)))
    after = activations(model, layer, x)
    assert torch.all(after[:, [0, 5, n - 1]] == 0)
    keep = [i for i in range(n) if i not in (0, 5, n - 1)]
    assert torch.allclose(after[:, keep], before[:, keep])
    install_mask(model, None)
    assert torch.allclose(activations(model, layer, x), before)


def test_pruned_neurons_stay_zero_after_fine_tuning(data_dir):
    cfg = ExperimentConfig.from_flat({"data-dir": data_dir, "data-fraction": 0.02, "num-clients": 2,
                                      "num-attackers": 0, "lr": 0.1})
    model = build_model(cfg)
    mask = NeuronMask(model.last_conv, 64, tuple(range(0, 64, 3)))
    result = run_local_job(cfg, 1, model.state_dict(), server_round=1, phase="finetune", mask=mask)
    trained = install_mask(build_model(cfg), mask)
    trained.load_state_dict(result.state)
    assert any(not torch.equal(result.state[k], v) for k, v in model.state_dict().items()), "it trained"
    acts = activations(trained, trained.last_conv, torch.rand(8, 1, 28, 28))
    assert torch.all(acts[:, list(mask.pruned)] == 0)
    kept = [i for i in range(64) if i not in mask.pruned]
    assert acts[:, kept].abs().sum() > 0


def test_pruned_context_restores_previous_mask():
    torch.manual_seed(0)
    model = build_model(ExperimentConfig())
    x = torch.rand(16, 1, 28, 28)
    live = (activations(model, model.last_conv, x).sum(dim=(0, 2, 3)) > 0).nonzero().flatten().tolist()
    a, b, c, d = live[:4]
    install_mask(model, NeuronMask(model.last_conv, 64, (a,)))
    with pruned(model, [b, c, d], 2, model.last_conv, 64):
        acts = activations(model, model.last_conv, x)
        assert torch.all(acts[:, [a, b, c]] == 0) and acts[:, d].abs().sum() > 0
    acts = activations(model, model.last_conv, x)
    assert torch.all(acts[:, a] == 0) and acts[:, b].abs().sum() > 0


def test_aw_zeroes_exactly_the_weights_outside_mu_pm_delta_sigma():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 100.0]])
    stats = weight_stats(w)
    assert stats.mu == pytest.approx(w.double().mean().item())
    assert stats.sigma == pytest.approx(w.double().std(unbiased=False).item())
    lo, hi = stats.mu - 1.0 * stats.sigma, stats.mu + 1.0 * stats.sigma
    expected = (w < lo) | (w > hi)
    assert torch.equal(extreme_mask(w, stats, 1.0), expected)
    layer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    net = torch.nn.Sequential()
    net.add_module("fc", layer)
    zeroed = zero_extreme_weights(net, "fc", stats, 1.0)
    assert zeroed == int(expected.sum()) == 1
    assert torch.equal(layer.weight.detach(), torch.where(expected, torch.zeros_like(w), w))


def test_aw_statistics_and_zeroing_skip_pruned_neurons():
    w = torch.tensor([[1.0, -1.0], [50.0, -50.0], [2.0, -2.0]])
    mask = NeuronMask("fc", 3, (1,))
    stats = weight_stats(w, mask)
    assert stats.mu == pytest.approx(0.0) and stats.sigma == pytest.approx(1.5811, rel=1e-4)
    assert not extreme_mask(w, stats, 0.5, mask)[1].any(), "pruned rows are left alone"


def test_aw_statistics_over_all_weights_count_pruned_neurons_as_zeros():
    w = torch.tensor([[1.0, 3.0], [50.0, -50.0], [2.0, 2.0]])
    stats = weight_stats(w, NeuronMask("fc", 3, (1,)), scope="all")
    assert stats.mu == pytest.approx(8.0 / 6.0)  # (1 + 3 + 0 + 0 + 2 + 2) / 6
    values = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    assert stats.sigma == pytest.approx(values.std(unbiased=False).item())
    assert weight_stats(w, None, scope="all") == weight_stats(w), "without pruning both scopes agree"


def test_aw_candidate_context_restores_weights():
    model = build_model(ExperimentConfig())
    weight = model.get_submodule(model.last_conv).weight
    saved = weight.detach().clone()
    stats = weight_stats(weight)
    with extreme_weights_zeroed(model, model.last_conv, stats, 1.0) as zeroed:
        assert zeroed > 0 and int((weight == 0).sum()) >= zeroed
    assert torch.equal(weight.detach(), saved)


def test_delta_schedule():
    assert delta_schedule(5.0, 0.25, 4.0) == [5.0, 4.75, 4.5, 4.25, 4.0]


@pytest.mark.parametrize("values", [{"dataset": "fashion-mnist"}, {"dataset": "mnist"},
                                    {"dataset": "cifar10", "model-widths": "4,4,8,8,8,8,8,8"},
                                    {"dataset": "cifar10", "model": "resnet18-slim", "model-widths": "4,4,8,8"}])
def test_candidate_measure_equals_whole_model_accuracy_at_every_pruning_level_and_delta(values):
    cfg = ExperimentConfig.from_flat(values)
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    with torch.no_grad():  # zero-mean filters and no biases: a random net whose predictions vary with x
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight -= module.weight.mean(dim=tuple(range(1, module.weight.dim())), keepdim=True)
                if module.bias is not None:
                    module.bias.zero_()
    size, channels = (32, 3) if cfg.dataset == "cifar10" else (28, 1)
    x = torch.rand(250, channels, size, size)
    y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10
    layer = model.last_conv
    n = layer_neurons(model, layer)
    order = torch.randperm(n).tolist()
    levels = [0, 1, n // 4, n // 2, n - 1]
    stats = weight_stats(layer_weight(model, layer), None, "kept")
    deltas = [3.0, 1.0, 0.5, 0.2]

    def whole(m):
        return accuracy(m, x, y, 64)

    pruning = candidate_measure(model, x, y, 64, model.neuron_outputs[layer])
    got = pruning_accuracies(model, order, levels, layer, n, pruning)
    assert got == pruning_accuracies(model, order, levels, layer, n, whole)
    aw = candidate_measure(model, x, y, 64, layer)
    got_aw = aw_accuracies(model, layer, stats, deltas, aw)
    assert got_aw == aw_accuracies(model, layer, stats, deltas, whole)
    assert len(set(got)) > 1 and len(set(got_aw)) > 1  # the candidates do change the predictions
    with pytest.raises(ValueError, match="another model"):
        pruning(build_model(cfg))
