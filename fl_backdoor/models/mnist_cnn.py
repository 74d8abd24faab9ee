"""The paper's MNIST network: 2 conv + 2 fc, and one with batch norm."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from . import MODELS
from .chain import ChainNet
from .fashion_cnn import conv_block


class MnistCNN(ChainNet):
    """2 conv + 2 fc for MNIST; widths (c1, c2) and fc units configurable.

    The paper's small net is (8, 16), its large one and the DBA reference (20, 50)
    with a 500-unit fc.  With ``batch_norm`` every conv is followed by a batch norm before
    its ReLU (model "mnist-cnn-bn").
    """

    def __init__(self, widths: tuple[int, ...] = (20, 50), fc: int = 500, num_classes: int = 10,
                 batch_norm: bool = False) -> None:
        super().__init__()
        c1, c2 = widths
        self.features = nn.Sequential(OrderedDict(
            conv_block(1, 1, c1, batch_norm, kernel=5, padding=0) + [("pool1", nn.MaxPool2d(2))]
            + conv_block(2, c1, c2, batch_norm, kernel=5, padding=0) + [("pool2", nn.MaxPool2d(2))]))
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


@MODELS.register("mnist-cnn-bn", channels=1, size=28, widths=2)
def mnist_cnn_bn(widths: tuple[int, ...]) -> nn.Module:
    """MnistCNN with a batch norm after every conv."""
    return MnistCNN(widths or (20, 50), batch_norm=True)
