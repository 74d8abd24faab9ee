"""The paper's MNIST network: 2 conv + 2 fc."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from . import MODELS
from .chain import ChainNet


class MnistCNN(ChainNet):
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

@MODELS.register("mnist-cnn", channels=1, size=28, widths=2)
def mnist_cnn(widths: tuple[int, ...]) -> nn.Module:
    """MnistCNN, (20, 50) by default."""
    return MnistCNN(widths or (20, 50))
