"""Every model runs on its dataset's images and names real prunable layers."""

import pytest
import torch
from torch import nn

from fl_backdoor.config import ConfigError, ExperimentConfig
from fl_backdoor.models import build_model, layer_neurons, resolve_layer


@pytest.mark.parametrize("values, neurons", [
    ({"dataset": "mnist"}, 50),
    ({"dataset": "mnist", "model-widths": "8,16"}, 16),
    ({"dataset": "fashion-mnist"}, 64),
    ({"dataset": "cifar10"}, 512),
    ({"dataset": "cifar10", "model": "resnet18-slim"}, 256),
])
def test_models_and_their_last_conv(values, neurons):
    cfg = ExperimentConfig.from_flat(values)
    model = build_model(cfg)
    size, channels = (32, 3) if cfg.dataset == "cifar10" else (28, 1)
    assert model(torch.rand(2, channels, size, size)).shape == (2, 10)
    assert isinstance(model.get_submodule(model.last_conv), nn.Conv2d)
    assert layer_neurons(model, model.last_conv) == neurons
    assert resolve_layer(model, "") == model.last_conv
    for layer, output in model.neuron_outputs.items():
        model.get_submodule(layer), model.get_submodule(output)


def test_wrong_widths_and_layers_are_config_errors():
    with pytest.raises(ConfigError, match="model-widths"):
        build_model(ExperimentConfig.from_flat({"dataset": "mnist", "model-widths": "8,16,32"}))
    model = build_model(ExperimentConfig())
    with pytest.raises(ConfigError, match="pruning-layer"):
        resolve_layer(model, "features.pool1")


@pytest.mark.parametrize("values", [{"dataset": "mnist"}, {"dataset": "fashion-mnist"},
                                    {"dataset": "fashion-mnist", "model": "fmnist-cnn-ceil"},
                                    {"dataset": "cifar10", "model-widths": "4,4,8,8,8,8,8,8"}])
def test_a_chain_model_cut_before_any_module_computes_the_same_outputs(values):
    cfg = ExperimentConfig.from_flat(values)
    model = build_model(cfg).eval()
    size, channels = (32, 3) if cfg.dataset == "cifar10" else (28, 1)
    x = torch.rand(5, channels, size, size)
    whole = model(x)
    chains = {"features": model.features, "classifier": model.classifier}
    names = [f"{part}.{name}" for part, chain in chains.items() if isinstance(chain, nn.Sequential)
             for name in chain._modules]
    assert len(names) >= 7
    for name in names:
        head, tail = model.cut_before(name)
        assert torch.equal(tail(head(x)), whole), name
    with pytest.raises(ValueError, match=r"features\.conv9"):
        model.cut_before("features.conv9")


def test_residual_models_are_not_chains():
    model = build_model(ExperimentConfig.from_flat({"dataset": "cifar10", "model": "resnet18-slim"}))
    assert not hasattr(model, "cut_before")
