"""The paper's Fashion-MNIST network: 3 conv + 2 fc, and its ceil-pooling variant."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from . import MODELS
from .chain import ChainNet


class FashionCNN(ChainNet):
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

@MODELS.register("fmnist-cnn", channels=1, size=28, widths=3)
def fmnist_cnn(widths: tuple[int, ...]) -> nn.Module:
    """FashionCNN, (16, 32, 64) by default."""
    return FashionCNN(widths or (16, 32, 64))


@MODELS.register("fmnist-cnn-ceil", channels=1, size=28, widths=3)
def fmnist_cnn_ceil(widths: tuple[int, ...]) -> nn.Module:
    """FashionCNN whose third pooling keeps conv3's row and column 6."""
    return FashionCNN(widths or (16, 32, 64), ceil_pool=True)
