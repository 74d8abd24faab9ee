"""Persistent neuron pruning masks.

A pruned neuron's output is forced to zero by a forward hook on the module that
produces the layer's activations (``model.neuron_outputs``), so the neuron stays
silent through any later training, whatever its weights become, in plain and in
residual networks alike.  The mask is saved with every checkpoint and sent to the
clients with every fine-tuning message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from fl_backdoor.models import layer_neurons

_HANDLE_ATTR = "_fl_backdoor_mask_handle"
_MASK_ATTR = "_fl_backdoor_mask"


@dataclass(frozen=True)
class NeuronMask:
    """Pruned neurons of one layer."""

    layer: str
    size: int
    pruned: tuple[int, ...] = ()

    def keep(self, device: torch.device | None = None) -> torch.Tensor:
        """1.0 for kept neurons, 0.0 for pruned ones."""
        keep = torch.ones(self.size, device=device)
        if self.pruned:
            keep[list(self.pruned)] = 0.0
        return keep

    def to_dict(self) -> dict:
        """JSON/ConfigRecord-friendly form."""
        return {"layer": self.layer, "size": self.size, "pruned": list(self.pruned)}

    @classmethod
    def from_dict(cls, data: dict) -> NeuronMask:
        """Inverse of to_dict."""
        return cls(str(data["layer"]), int(data["size"]), tuple(int(i) for i in data["pruned"]))


def neuron_output_name(model: nn.Module, layer: str) -> str:
    """Name of the module whose output holds ``layer``'s neuron activations (``model.neuron_outputs[layer]``)."""
    # an attribute every model sets (fl_backdoor.models); nn.Module types unknown attributes as Tensor | Module
    return cast("Mapping[str, str]", model.neuron_outputs)[layer]


def neuron_output_module(model: nn.Module, layer: str) -> nn.Module:
    """The module whose output holds ``layer``'s neuron activations."""
    return model.get_submodule(neuron_output_name(model, layer))


def install_mask(model: nn.Module, mask: NeuronMask | None) -> nn.Module:
    """Make ``mask`` the model's only pruning mask (None removes it); returns the model."""
    old = getattr(model, _HANDLE_ATTR, None)
    if old is not None:
        old.remove()
        setattr(model, _HANDLE_ATTR, None)
    setattr(model, _MASK_ATTR, mask)
    if mask is None or not mask.pruned:
        return model
    if layer_neurons(model, mask.layer) != mask.size:
        raise ValueError(f"mask for {mask.size} neurons does not fit layer {mask.layer}")
    keep_cache: dict[torch.device, torch.Tensor] = {}

    def zero_pruned(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if output.device not in keep_cache:
            keep_cache[output.device] = mask.keep(output.device)
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return output * keep_cache[output.device].view(shape)

    handle = neuron_output_module(model, mask.layer).register_forward_hook(zero_pruned)
    setattr(model, _HANDLE_ATTR, handle)
    return model


def current_mask(model: nn.Module) -> NeuronMask | None:
    """The mask installed on the model, if any."""
    return getattr(model, _MASK_ATTR, None)


def mask_on(mask: NeuronMask | None, layer: str) -> NeuronMask | None:
    """The mask if it prunes ``layer``, else None (a mask of another layer does not concern it)."""
    return mask if mask is not None and mask.layer == layer else None
