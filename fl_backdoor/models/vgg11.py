"""VGG11 with BatchNorm, the paper's CIFAR-10 model."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import ConfigError
from . import MODELS
from .chain import ChainNet

_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(ChainNet):
    """VGG11 with BatchNorm sized for 32x32 inputs (the paper's CIFAR-10 model)."""

    def __init__(self, widths: tuple[int, ...] = (), num_classes: int = 10) -> None:
        super().__init__()
        plan: list[int | str] = list(_VGG11)
        if widths:
            convs = [i for i, v in enumerate(plan) if v != "M"]
            if len(widths) != len(convs):
                raise ConfigError(f"model-widths: vgg11 has {len(convs)} conv layers, got {len(widths)} widths")
            for i, w in zip(convs, widths, strict=True):
                plan[i] = w
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        self.neuron_outputs = {}
        channels, conv, pool = 3, 0, 0
        for item in plan:
            if isinstance(item, str):  # "M"
                pool += 1
                layers[f"pool{pool}"] = nn.MaxPool2d(2)
                continue
            conv += 1
            layers[f"conv{conv}"] = nn.Conv2d(channels, item, 3, padding=1)
            layers[f"bn{conv}"] = nn.BatchNorm2d(item)
            layers[f"relu{conv}"] = nn.ReLU()
            self.neuron_outputs[f"features.conv{conv}"] = f"features.relu{conv}"
            channels = item
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(channels, num_classes)
        self.last_conv = f"features.conv{conv}"

@MODELS.register("vgg11", channels=3, size=32)
def vgg11(widths: tuple[int, ...]) -> nn.Module:
    """VGG11; widths, when given, replace its eight conv widths."""
    return VGG11(widths)
