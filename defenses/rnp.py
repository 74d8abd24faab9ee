"""RNP, reconstructive neuron pruning (Li et al., "Reconstructive Neuron Pruning for Backdoor
Defense", ICML 2023): unlearn the clean data, then recover it with a neuron mask; the neurons
the recovery leaves low are the backdoor's.

1. Unlearning: a copy of the model ascends the cross-entropy of the clean data (SGD,
   lr 0.01, momentum 0.9, weight decay 5e-4, lr x 0.1 after epochs 10 and 20, gradient
   norm clipped to 20) until its accuracy over an epoch falls to ``clean_threshold``
   (0.2), for at most 20 epochs.  Clean features collapse first; the backdoor survives.
2. Recovering: on the unlearned copy, frozen, every channel of every conv layer gets a
   mask m in [0, 1] on its scale (the batch norm's gamma where the conv has one, as the
   reference masks its batch norms; else the kernel), the bias untouched, initialised at 1
   and trained to minimise 0.2 x the clean cross-entropy (SGD, lr 0.2, momentum 0.9,
   20 epochs), clipped to [0, 1] after every step.
3. Pruning: in the original model, every channel whose mask is at most ``threshold``
   (0.7) loses its batch-norm scale, or without batch norm its kernel (the reference zeroes
   the weight and keeps the bias).

Federated (server_strategies/phases/rnp.py): every client runs steps 1 and 2 on its own
data and sends its masks; the server averages them and takes step 3.

Settings are BackdoorBench's RNP defaults (batch 256).  BackdoorBench also tries a range
of thresholds and keeps the model of lowest attack success; no decision here looks at the
attack set, so the fixed threshold (its ``pruning_number``) is the rule.  The reference
clips the gradient norm before computing the gradient (a no-op); it is clipped after here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fl_backdoor.training import shuffled_batches

from .clp import conv_bn_pairs


@dataclass(frozen=True)
class RNPSettings:
    """BackdoorBench's RNP defaults."""

    batch_size: int = 256
    unlearning_lr: float = 0.01
    unlearning_epochs: int = 20
    clean_threshold: float = 0.2
    recovering_lr: float = 0.2
    recovering_epochs: int = 20
    alpha: float = 0.2
    threshold: float = 0.7


def channel_modules(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.BatchNorm2d]]:
    """Where each conv layer's channels are masked and pruned: its batch norm, or the conv itself."""
    return [(name, bn if bn is not None else conv) for name, conv, bn in conv_bn_pairs(model)]


def _scaled(mask: torch.Tensor, bias: torch.Tensor | None) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]:
    """Forward hook: the channel's weighted term times its mask, its bias untouched ((out - b) m + b)."""
    def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (out.dim() - 2)))
        if bias is None:
            return out * mask.view(shape)
        b = bias.detach().view(shape)
        return (out - b) * mask.view(shape) + b
    return hook


@contextmanager
def neuron_masks(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Trainable masks (initially 1) on every conv channel's scale, per conv layer.

    As the reference's masked batch norm (gamma m x_hat + beta), the mask multiplies the
    channel's weighted term and leaves its bias: (out - b) m + b.
    """
    masks: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in channel_modules(model):
        mask = torch.ones(module.weight.shape[0], device=module.weight.device, requires_grad=True)
        masks[name] = mask
        handles.append(module.register_forward_hook(_scaled(mask, module.bias)))
    try:
        yield masks
    finally:
        for handle in handles:
            handle.remove()


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: RNPSettings,
            generator: torch.Generator) -> tuple[nn.Module, int, float]:
    """Step 1 on a copy: (the unlearned copy, epochs run, its accuracy over the last epoch)."""
    copy_ = copy.deepcopy(model).train()
    optimiser = torch.optim.SGD(copy_.parameters(), lr=settings.unlearning_lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, [10, 20], 0.1)
    accuracy, epochs = 1.0, 0
    while epochs < settings.unlearning_epochs and accuracy > settings.clean_threshold:
        epochs += 1
        correct = 0
        for idx in shuffled_batches(x.shape[0], settings.batch_size, generator, x.device):
            out = copy_(x[idx])
            loss = F.cross_entropy(out, y[idx])
            optimiser.zero_grad()
            (-loss).backward()
            nn.utils.clip_grad_norm_(copy_.parameters(), max_norm=20)
            optimiser.step()
            correct += int((out.argmax(1) == y[idx]).sum())
        scheduler.step()
        accuracy = correct / max(int(x.shape[0]), 1)
    return copy_, epochs, accuracy


def recover_masks(unlearned: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: RNPSettings,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Step 2: the channel masks, in [0, 1], that best restore clean accuracy to the frozen unlearned model."""
    unlearned.train()
    for p in unlearned.parameters():
        p.requires_grad_(False)
    with neuron_masks(unlearned) as masks:
        optimiser = torch.optim.SGD(list(masks.values()), lr=settings.recovering_lr, momentum=0.9)
        for _ in range(settings.recovering_epochs):
            for idx in shuffled_batches(x.shape[0], settings.batch_size, generator, x.device):
                loss = settings.alpha * F.cross_entropy(unlearned(x[idx]), y[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                with torch.no_grad():
                    for mask in masks.values():
                        mask.clamp_(0.0, 1.0)
    return {name: mask.detach() for name, mask in masks.items()}


def prune_by_masks(model: nn.Module, masks: dict[str, torch.Tensor], threshold: float) -> dict[str, list[int]]:
    """Step 3: zero the scale (batch norm) or kernel (no batch norm) of every channel whose mask <= threshold."""
    pruned: dict[str, list[int]] = {}
    for name, module in channel_modules(model):
        chosen = torch.nonzero(masks[name] <= threshold).flatten().tolist()
        if chosen:
            with torch.no_grad():
                module.weight[chosen] = 0.0
            pruned[name] = chosen
    return pruned


@dataclass(frozen=True)
class RecoveredMasks:
    """Steps 1 and 2 on one clean set: the masks and how the unlearning went."""

    masks: dict[str, torch.Tensor]
    unlearning_epochs: int
    unlearned_accuracy: float


def rnp_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: RNPSettings,
              generator: torch.Generator) -> RecoveredMasks:
    """Steps 1 and 2 on the clean data (x, y); ``model`` is left as it was."""
    unlearned, epochs, accuracy = unlearn(model, x, y, settings, generator)
    return RecoveredMasks(recover_masks(unlearned, x, y, settings, generator), epochs, accuracy)


def flatten_masks(masks: dict[str, torch.Tensor]) -> list[float]:
    """The masks as one list, layer after layer in the model's order (what a client sends)."""
    return [float(v) for mask in masks.values() for v in mask.tolist()]


def channel_counts(model: nn.Module) -> dict[str, int]:
    """How many channels RNP masks in each of ``model``'s conv layers."""
    return {name: int(module.weight.shape[0]) for name, module in channel_modules(model)}


def split_masks(model: nn.Module, values: Sequence[float] | np.ndarray) -> dict[str, torch.Tensor]:
    """Inverse of flatten_masks for ``model``'s layers; ValueError when the count differs."""
    sizes = channel_counts(model)
    flat = torch.as_tensor(np.asarray(values, dtype=np.float32)).flatten()
    if flat.numel() != sum(sizes.values()):
        raise ValueError(f"{flat.numel()} mask values for {sum(sizes.values())} channels")
    return dict(zip(sizes, torch.split(flat, list(sizes.values())), strict=True))


def pruning_summary(masks: dict[str, torch.Tensor], pruned: dict[str, list[int]]) -> dict[str, object]:
    """What a pruning by masks did, for the results."""
    return {"rnp_channels": pruned, "rnp_pruned": sum(len(c) for c in pruned.values()),
            "mask_min": min(float(m.min()) for m in masks.values()) if masks else 1.0}


def rnp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: RNPSettings,
        generator: torch.Generator) -> dict[str, object]:
    """RNP on the clean data (x, y): prunes ``model`` in place; returns what each step found."""
    found = rnp_masks(model, x, y, settings, generator)
    pruned = prune_by_masks(model, found.masks, settings.threshold)
    return {"unlearning_epochs": found.unlearning_epochs, "unlearned_accuracy": found.unlearned_accuracy,
            **pruning_summary(found.masks, pruned)}
