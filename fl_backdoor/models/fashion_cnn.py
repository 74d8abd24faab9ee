"""The paper's Fashion-MNIST network: 3 conv + 2 fc, its ceil-pooling variant, and one with batch norm."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from . import MODELS
from .chain import ChainNet


class FashionCNN(ChainNet):
    """3 conv + 2 fc for Fashion-MNIST.

    conv3's output is 7x7; the third 2x2 pooling drops its row and column 6 (3x3 to the
    classifier), or with ``ceil_pool`` keeps them (4x4, model "fmnist-cnn-ceil").  With
    ``batch_norm`` every conv is followed by a batch norm before its ReLU (model
    "fmnist-cnn-bn"), the layout ANP, RNP and CLP were designed for.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), fc: int = 128, num_classes: int = 10,
                 ceil_pool: bool = False, batch_norm: bool = False) -> None:
        super().__init__()
        c1, c2, c3 = widths
        side = 4 if ceil_pool else 3
        self.features = nn.Sequential(OrderedDict(
            conv_block(1, 1, c1, batch_norm) + [("pool1", nn.MaxPool2d(2))]
            + conv_block(2, c1, c2, batch_norm) + [("pool2", nn.MaxPool2d(2))]
            + conv_block(3, c2, c3, batch_norm) + [("pool3", nn.MaxPool2d(2, ceil_mode=ceil_pool))]))
        self.classifier = nn.Sequential(OrderedDict(
            fc1=nn.Linear(c3 * side * side, fc), relu4=nn.ReLU(), fc2=nn.Linear(fc, num_classes),
        ))
        self.last_conv = "features.conv3"
        self.neuron_outputs = {"features.conv1": "features.relu1", "features.conv2": "features.relu2",
                               "features.conv3": "features.relu3", "classifier.fc1": "classifier.relu4"}

def conv_block(k: int, c_in: int, c_out: int, batch_norm: bool, kernel: int = 3, padding: int = 1
               ) -> list[tuple[str, nn.Module]]:
    """conv<k> (3x3, padding 1 by default), bn<k> with ``batch_norm``, relu<k>: the named modules of one block."""
    block: list[tuple[str, nn.Module]] = [(f"conv{k}", nn.Conv2d(c_in, c_out, kernel, padding=padding))]
    if batch_norm:
        block.append((f"bn{k}", nn.BatchNorm2d(c_out)))
    return [*block, (f"relu{k}", nn.ReLU())]


@MODELS.register("fmnist-cnn", channels=1, size=28, widths=3)
def fmnist_cnn(widths: tuple[int, ...]) -> nn.Module:
    """FashionCNN, (16, 32, 64) by default."""
    return FashionCNN(widths or (16, 32, 64))


@MODELS.register("fmnist-cnn-ceil", channels=1, size=28, widths=3)
def fmnist_cnn_ceil(widths: tuple[int, ...]) -> nn.Module:
    """FashionCNN whose third pooling keeps conv3's row and column 6."""
    return FashionCNN(widths or (16, 32, 64), ceil_pool=True)


@MODELS.register("fmnist-cnn-bn", channels=1, size=28, widths=3)
def fmnist_cnn_bn(widths: tuple[int, ...]) -> nn.Module:
    """FashionCNN with a batch norm after every conv."""
    return FashionCNN(widths or (16, 32, 64), batch_norm=True)
