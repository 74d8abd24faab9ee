"""RNP, reconstructive neuron pruning (Li et al., "Reconstructive Neuron Pruning for Backdoor
Defense", ICML 2023): unlearn the clean data, then recover it with a neuron mask; the neurons
the recovery leaves low are the backdoor's.

1. Unlearning: a copy of the model ascends the cross-entropy of the clean data (SGD,
   lr 0.01, momentum 0.9, weight decay 5e-4, lr x 0.1 after epochs 10 and 20, gradient
   norm clipped to 20) until its clean accuracy falls to ``clean_threshold`` (0.2), for
   at most 20 epochs.  The rule is checked after every step, on the whole clean set, as
   the paper says "until"; both reference codes check it once per epoch, on the epoch's
   running accuracy, which on a few hundred images lets the last epoch's steps push the
   model far past the threshold.  Clean features collapse first; the backdoor survives.
2. Recovering: on the unlearned copy, frozen, every channel of every conv layer gets a
   mask m in [0, 1] on its scale (the batch norm's gamma where the conv has one, as the
   reference masks its batch norms; else the kernel), the bias untouched, initialised at 1
   and trained to minimise 0.2 x the clean cross-entropy (SGD, lr 0.2, momentum 0.9,
   20 epochs), clipped to [0, 1] after every step.
3. Pruning: in the original model, every channel whose mask is at most ``threshold``
   (0.7) loses its batch-norm scale, or without batch norm its kernel (the reference zeroes
   the weight and keeps the bias).  The threshold is the strongest candidate: when pruning
   at it costs more clean accuracy than the budget (defenses/budget.py), lower thresholds
   are tried in steps of 0.05 (the reference's scan grid) down to 0, and when none is
   within the budget nothing is pruned.

The method's precondition is an unlearned model that still separates classes: the masks
are meant to mark what the clean data needs once clean features are gone.  An unlearning
that ends with every clean image in one class, or with logits grown tenfold (without batch
norm, gradient ascent scales every layer at once), leaves masks that mark the channels whose
removal calms the logits; RNP then says so and prunes nothing.  Both checks are this port's,
stated in results.json; the references run only on networks with batch norm.

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

from fl_backdoor.training import predict, shuffled_batches

from .budget import Budget, strongest_within
from .clp import conv_bn_pairs

LOGIT_BLOW_UP = 10.0  # mean |logit| after unlearning over before, beyond which the masks measure the blow-up
THRESHOLD_STEP = 0.05  # the reference's scan grid of thresholds


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


@dataclass(frozen=True)
class Unlearned:
    """Step 1's outcome: the unlearned copy, and how the unlearning went."""

    model: nn.Module
    epochs: int
    accuracies: list[float]  # clean accuracy after every step
    top_class_share: float  # share of the clean images the copy puts in its most frequent class
    logit_growth: float  # mean |logit| of the copy over the original's, on the clean images

    @property
    def accuracy(self) -> float:
        """Clean accuracy when the unlearning stopped."""
        return self.accuracies[-1] if self.accuracies else 1.0


def mean_abs_logit(model: nn.Module, x: torch.Tensor, batch_size: int) -> float:
    """Mean |logit| of the model on x, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = [model(x[i:i + batch_size]).abs() for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return float(torch.cat(logits).mean()) if logits else 0.0


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Accuracy on the clean set in eval mode (the model's mode is restored)."""
    was_training = model.training
    accuracy = float((predict(model, x, batch_size) == y).float().mean()) if y.numel() else 0.0
    model.train(was_training)
    return accuracy


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: RNPSettings,
            generator: torch.Generator) -> Unlearned:
    """Step 1 on a copy, stopping after the first step that brings its clean accuracy to ``clean_threshold``."""
    before = mean_abs_logit(model, x, settings.batch_size)
    copy_ = copy.deepcopy(model).train()
    optimiser = torch.optim.SGD(copy_.parameters(), lr=settings.unlearning_lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, [10, 20], 0.1)
    accuracies: list[float] = []
    epochs = 0
    while epochs < settings.unlearning_epochs and not (accuracies and accuracies[-1] <= settings.clean_threshold):
        epochs += 1
        for idx in shuffled_batches(x.shape[0], settings.batch_size, generator, x.device):
            loss = F.cross_entropy(copy_(x[idx]), y[idx])
            optimiser.zero_grad()
            (-loss).backward()
            nn.utils.clip_grad_norm_(copy_.parameters(), max_norm=20)
            optimiser.step()
            accuracies.append(clean_accuracy(copy_, x, y, settings.batch_size))
            if accuracies[-1] <= settings.clean_threshold:
                break
        scheduler.step()
    predicted = predict(copy_, x, settings.batch_size)
    copy_.train()
    top = float(torch.bincount(predicted, minlength=1).max()) / max(int(x.shape[0]), 1)
    growth = mean_abs_logit(copy_, x, settings.batch_size) / max(before, 1e-12)
    return Unlearned(copy_, epochs, accuracies, top, growth)


def precondition(top_class_share: float, logit_growth: float) -> str | None:
    """Why the masks of an unlearned model would not mark the backdoor (None: they may)."""
    if top_class_share >= 1.0:
        return "the unlearned model puts every clean image in one class: its masks would mark the channels whose " \
               "removal undoes the collapse, not the backdoor's"
    if logit_growth > LOGIT_BLOW_UP:
        return f"the unlearning grew the mean |logit| {logit_growth:.0f}-fold (more than {LOGIT_BLOW_UP:g}): its " \
               f"masks would mark the channels whose removal calms the logits, not the backdoor's"
    return None


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


def thresholds_from(threshold: float) -> list[float]:
    """The candidate thresholds, strongest first: ``threshold``, then down by 0.05 to 0."""
    steps = int(round(threshold / THRESHOLD_STEP, 6))
    below = [round(THRESHOLD_STEP * i, 10) for i in range(steps, -1, -1) if THRESHOLD_STEP * i < threshold - 1e-9]
    return [threshold, *below]


def prune_within_budget(model: nn.Module, masks: dict[str, torch.Tensor], threshold: float,
                        accuracy_of: Callable[[nn.Module], float], budget: Budget
                        ) -> tuple[float | None, dict[str, list[int]], list[tuple[float, float]]]:
    """Step 3 at the strongest threshold (``threshold`` downwards) whose clean accuracy the budget allows:
    (the threshold, None when none is allowed and nothing is pruned; the channels pruned; (threshold, accuracy)
    of every candidate measured)."""
    modules = dict(channel_modules(model))
    saved = {name: module.weight.detach().clone() for name, module in modules.items()}

    def accuracy_at(t: float) -> float:
        prune_by_masks(model, masks, t)
        accuracy = accuracy_of(model)
        with torch.no_grad():
            for name, module in modules.items():
                module.weight.copy_(saved[name])
        return accuracy

    chosen, seen = strongest_within(thresholds_from(threshold), accuracy_at, budget)
    return chosen, (prune_by_masks(model, masks, chosen) if chosen is not None else {}), seen


@dataclass(frozen=True)
class RecoveredMasks:
    """Steps 1 and 2 on one clean set: the masks and how the unlearning went."""

    masks: dict[str, torch.Tensor]
    unlearning_epochs: int
    unlearned_accuracy: float
    unlearning_steps: int
    top_class_share: float
    logit_growth: float


def rnp_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: RNPSettings,
              generator: torch.Generator) -> RecoveredMasks:
    """Steps 1 and 2 on the clean data (x, y); ``model`` is left as it was."""
    unlearned = unlearn(model, x, y, settings, generator)
    return RecoveredMasks(recover_masks(unlearned.model, x, y, settings, generator), unlearned.epochs,
                          unlearned.accuracy, len(unlearned.accuracies), unlearned.top_class_share,
                          unlearned.logit_growth)


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
    """What a pruning by masks did, and the masks' distribution, for the results."""
    values = torch.cat([m.flatten() for m in masks.values()]) if masks else torch.ones(1)
    return {"rnp_channels": pruned, "rnp_pruned": sum(len(c) for c in pruned.values()),
            "mask_min": float(values.min()), "mask_median": float(values.median()),
            "masks_zero": int((values == 0).sum()), "masks": int(values.numel())}


def rnp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: RNPSettings,
        generator: torch.Generator, budget: float) -> dict[str, object]:
    """RNP on the clean data (x, y) within a clean-accuracy ``budget``: prunes ``model`` in place, or leaves it
    when the precondition fails or no threshold is within the budget; returns what each step found."""
    def accuracy_of(m: nn.Module) -> float:
        return clean_accuracy(m, x, y, settings.batch_size)

    limit = Budget(accuracy_of(model), budget)
    found = rnp_masks(model, x, y, settings, generator)
    facts: dict[str, object] = {"unlearning_epochs": found.unlearning_epochs,
                                "unlearning_steps": found.unlearning_steps,
                                "unlearned_accuracy": found.unlearned_accuracy,
                                "top_class_share": found.top_class_share, "logit_growth": found.logit_growth}
    failed = precondition(found.top_class_share, found.logit_growth)
    if failed:
        return {**facts, **pruning_summary(found.masks, {}), "threshold_used": None, "unchanged": failed,
                "budget": limit.record(limit.baseline)}
    used, pruned, seen = prune_within_budget(model, found.masks, settings.threshold, accuracy_of, limit)
    reason = None if used is not None else (f"pruning at every threshold from {settings.threshold:g} down to 0 costs "
                                            f"more clean accuracy than the budget {budget:g}")
    return {**facts, **pruning_summary(found.masks, pruned), "threshold_used": used, "unchanged": reason,
            "thresholds_tried": seen, "budget": limit.record(accuracy_of(model))}
