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
    ({"dataset": "fashion-mnist", "model": "fmnist-cnn-bn"}, 64),
    ({"dataset": "mnist", "model": "mnist-cnn-bn", "model-widths": "8,16"}, 16),
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
                                    {"dataset": "fashion-mnist", "model": "fmnist-cnn-bn"},
                                    {"dataset": "mnist", "model": "mnist-cnn-bn"},
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


@pytest.mark.parametrize("name, dataset, convs", [("fmnist-cnn-bn", "fashion-mnist", 3), ("mnist-cnn-bn", "mnist", 2)])
def test_the_batch_norm_variants_put_a_batch_norm_after_every_conv_and_fedavg_averages_its_statistics(name, dataset,
                                                                                                        convs):
    from flwr.app import ArrayRecord

    from defenses.clp import conv_bn_pairs
    from server_strategies.aggregators.fedavg import average_update

    torch.manual_seed(0)
    plain = build_model(ExperimentConfig.from_flat({"dataset": dataset}))
    torch.manual_seed(0)
    model = build_model(ExperimentConfig.from_flat({"dataset": dataset, "model": name}))
    pairs = conv_bn_pairs(model)
    assert len(pairs) == convs and all(bn is not None and bn.num_features == conv.out_channels for _, conv, bn in pairs)
    same = {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in same.items()), "the same weights from the same seed"
    # FedAvg averages the running statistics with the weights, as every entry of the state dict
    states = []
    for shift in (1.0, 3.0):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["features.bn1.running_mean"] += shift
        state["features.bn1.num_batches_tracked"] += int(shift)
        states.append(ArrayRecord(state))
    averaged = average_update(ArrayRecord(model.state_dict()), states, 1.0).to_torch_state_dict()
    assert torch.allclose(averaged["features.bn1.running_mean"], model.state_dict()["features.bn1.running_mean"] + 2.0)
    assert int(averaged["features.bn1.num_batches_tracked"]) == 2
