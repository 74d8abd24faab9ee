"""The networks of the papers, each naming the layers the defenses act on.

Every model carries two attributes:

* ``last_conv``: module name of its last convolutional layer (the default layer
  whose neurons are pruned and whose weights AW adjusts);
* ``neuron_outputs``: for each prunable layer, the module whose output holds that
  layer's neuron activations after the non-linearity (for a plain conv that is the
  ReLU after it; in a residual block it is the block's output).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .config import ConfigError, ExperimentConfig


class MnistCNN(nn.Module):
    """2 conv + 2 fc for MNIST; widths (c1, c2) and fc units configurable.

    The paper's small net is (8, 16), its large one and the DBA reference (20, 50)
    with a 500-unit fc.
    """

    def __init__(self, widths: tuple[int, ...] = (20, 50), fc: int = 500, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = widths
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(1, c1, 5), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(c1, c2, 5), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        ))
        self.classifier = nn.Sequential(OrderedDict(
            fc1=nn.Linear(c2 * 4 * 4, fc), relu3=nn.ReLU(), fc2=nn.Linear(fc, num_classes),
        ))
        self.last_conv = "features.conv2"
        self.neuron_outputs = {"features.conv1": "features.relu1", "features.conv2": "features.relu2",
                               "classifier.fc1": "classifier.relu3"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class FashionCNN(nn.Module):
    """3 conv + 2 fc for Fashion-MNIST.

    conv3's output is 7x7; the third 2x2 pooling drops its row and column 6 (3x3 to the
    classifier), or with ``ceil_pool`` keeps them (4x4, model "fmnist-cnn-ceil").
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), fc: int = 128, num_classes: int = 10,
                 ceil_pool: bool = False) -> None:
        super().__init__()
        c1, c2, c3 = widths
        side = 4 if ceil_pool else 3
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(1, c1, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(c1, c2, 3, padding=1), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(c2, c3, 3, padding=1), relu3=nn.ReLU(), pool3=nn.MaxPool2d(2, ceil_mode=ceil_pool),
        ))
        self.classifier = nn.Sequential(OrderedDict(
            fc1=nn.Linear(c3 * side * side, fc), relu4=nn.ReLU(), fc2=nn.Linear(fc, num_classes),
        ))
        self.last_conv = "features.conv3"
        self.neuron_outputs = {"features.conv1": "features.relu1", "features.conv2": "features.relu2",
                               "features.conv3": "features.relu3", "classifier.fc1": "classifier.relu4"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG11 with BatchNorm sized for 32x32 inputs (the paper's CIFAR-10 model)."""

    def __init__(self, widths: tuple[int, ...] = (), num_classes: int = 10) -> None:
        super().__init__()
        plan = list(_VGG11)
        if widths:
            convs = [i for i, v in enumerate(plan) if v != "M"]
            if len(widths) != len(convs):
                raise ConfigError(f"model-widths: vgg11 has {len(convs)} conv layers, got {len(widths)} widths")
            for i, w in zip(convs, widths):
                plan[i] = w
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        self.neuron_outputs = {}
        channels, conv, pool = 3, 0, 0
        for item in plan:
            if item == "M":
                pool += 1
                layers[f"pool{pool}"] = nn.MaxPool2d(2)
                continue
            conv += 1
            layers[f"conv{conv}"] = nn.Conv2d(channels, int(item), 3, padding=1)
            layers[f"bn{conv}"] = nn.BatchNorm2d(int(item))
            layers[f"relu{conv}"] = nn.ReLU()
            self.neuron_outputs[f"features.conv{conv}"] = f"features.relu{conv}"
            channels = int(item)
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(channels, num_classes)
        self.last_conv = f"features.conv{conv}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18Slim(nn.Module):
    """The DBA reference's CIFAR ResNet-18 with widths 32/64/128/256."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(widths[-1], num_classes)
        self.last_conv = "layer4.1.conv2"
        self.neuron_outputs = {f"layer{s}.{b}.conv2": f"layer{s}.{b}" for s in range(1, 5) for b in range(2)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def build_model(cfg: ExperimentConfig) -> nn.Module:
    """The model named by the config, with its default or configured widths."""
    name, widths = cfg.model_name, cfg.widths
    expected = {"mnist-cnn": 2, "fmnist-cnn": 3, "fmnist-cnn-ceil": 3, "resnet18-slim": 4}
    if widths and name in expected and len(widths) != expected[name]:
        raise ConfigError(f"model-widths: {name} takes {expected[name]} widths, got {len(widths)}")
    if name == "mnist-cnn":
        return MnistCNN(widths or (20, 50))
    if name in ("fmnist-cnn", "fmnist-cnn-ceil"):
        return FashionCNN(widths or (16, 32, 64), ceil_pool=name == "fmnist-cnn-ceil")
    if name == "vgg11":
        return VGG11(widths)
    if name == "resnet18-slim":
        return ResNet18Slim(widths or (32, 64, 128, 256))
    raise ConfigError(f"model: unknown model '{name}'")


def layer_neurons(model: nn.Module, layer: str) -> int:
    """Number of neurons (output channels or units) of a prunable layer."""
    module = model.get_submodule(layer)
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def resolve_layer(model: nn.Module, layer: str) -> str:
    """The prunable layer to act on: the given one, or the model's last conv layer."""
    chosen = layer or model.last_conv
    if chosen not in model.neuron_outputs:
        raise ConfigError(f"pruning-layer: '{chosen}' is not a prunable layer of this model "
                          f"(choose from {', '.join(model.neuron_outputs)})")
    return chosen
