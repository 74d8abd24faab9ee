"""The networks of the papers, one file each, registered by name (config key ``model``).

Every model carries two attributes:

* ``last_conv``: module name of its last convolutional layer (the default layer
  whose neurons are pruned and whose weights AW adjusts);
* ``neuron_outputs``: for each prunable layer, the module whose output holds that
  layer's neuron activations after the non-linearity (for a plain conv that is the
  ReLU after it; in a residual block it is the block's output).

A model file registers a builder that takes the configured widths (empty = the
model's default) with the input it is built for::

    @MODELS.register("my-net", channels=1, size=28, widths=2)
    def my_net(widths: tuple[int, ...]) -> nn.Module: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from torch import nn

from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:
    from ..config import ExperimentConfig

ModelBuilder = Callable[[tuple[int, ...]], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model", __name__, choices={"model": Registry.names},
                                          picks=lambda cfg: (cfg.model_name,))


def model_input(name: str) -> tuple[int, int]:
    """(channels, height) of the images a registered model is built for."""
    meta = MODELS.meta(name)
    return int(meta["channels"]), int(meta["size"])


def build_model(cfg: ExperimentConfig) -> nn.Module:
    """The model named by the config, with its default or configured widths."""
    name, widths = cfg.model_name, cfg.widths
    expected = MODELS.meta(name).get("widths")
    if widths and expected is not None and len(widths) != expected:
        raise ConfigError(f"model-widths: {name} takes {expected} widths, got {len(widths)}")
    return MODELS[name](widths)


RUNNING_VARIANCE = "running_var"
BATCH_NORM_STATISTICS = ("running_mean", RUNNING_VARIANCE, "num_batches_tracked")  # a batch norm's state-dict buffers


def is_batch_norm_statistic(name: str) -> bool:
    """Whether a state-dict entry is a batch norm's running statistic (a buffer, not a weight)."""
    return name.rsplit(".", 1)[-1] in BATCH_NORM_STATISTICS


def has_batch_norm(cfg: ExperimentConfig) -> bool:
    """Whether the configured model has a batch norm (running statistics in its state)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build_model(cfg).modules())


def layer_neurons(model: nn.Module, layer: str) -> int:
    """Number of neurons (output channels or units) of a prunable layer."""
    module = model.get_submodule(layer)
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    raise ConfigError(f"pruning-layer: '{layer}' is neither a conv nor a linear layer")


def resolve_layer(model: nn.Module, layer: str) -> str:
    """The prunable layer to act on: the given one, or the model's last conv layer."""
    chosen = layer or str(model.last_conv)
    prunable = cast("dict[str, str]", model.neuron_outputs)
    if chosen not in prunable:
        raise ConfigError(f"pruning-layer: '{chosen}' is not a prunable layer of this model "
                          f"(choose from {', '.join(prunable)})")
    return chosen
