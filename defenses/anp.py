"""Adversarial Neuron Pruning (ANP; Wu and Wang, NeurIPS 2021, Algorithm 1 and eq. 8).

Every hidden neuron k (a conv channel or an fc unit) gets a mask m_k in [0, 1] and two
multiplicative perturbations: delta_k on its weight and xi_k on its bias, so that the
neuron computes sigma((m_k + delta_k) w_k^T h + (1 + xi_k) b_k).  Where BatchNorm follows
a conv layer, the masked and perturbed quantities are the BN scale gamma and shift beta
instead (perturbing the conv would be undone by the normalisation).

Each iteration on a clean mini-batch:

1. delta, xi ~ U(-eps, eps), then ``steps`` signed-gradient ascent steps of size
   eps / steps on the loss of the perturbed network, projected onto [-eps, eps]
   (one step of size eps is the paper's Algorithm 1);
2. one SGD step on the masks for
   alpha * L(m . w, b) + (1 - alpha) * L((m + delta) . w, (1 + xi) . b),
   then the masks are projected onto [0, 1].

Afterwards neurons whose mask is at or below a threshold (the paper's rule), a fraction
of neurons with the smallest masks, or as many smallest-mask neurons as clean accuracy
allows (an extension that picks the cut from clean data alone) are pruned: their weight
(or BN scale) is zeroed and their bias (or BN shift) kept, so a pruned neuron outputs a
constant.  The backdoored weights are never trained.  During the mask optimisation batch
norm normalises with each batch's own statistics, as both reference codes run it (they put
the whole network in train mode); every other module stays in eval mode, and the running
statistics of the caller's model are left as they were (``batch_norm="eval"`` uses them
instead: on the reference target's Fashion-MNIST model that left ASR at 99.8, where train
mode brings it to 14.6, docs/results/reference.md).

The output layer is not masked: its units are the classes, and pruning one would remove
a class rather than a feature.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fl_backdoor.training import accuracy

from .neuron_ranking import pruning_levels
from .stop_rules import last_passing


@dataclass(frozen=True)
class ANPSettings:
    """ANP hyperparameters; the defaults are the paper's (REFERENCE.md)."""

    eps: float = 0.4          # perturbation budget
    steps: int = 1            # perturbation steps per iteration
    alpha: float = 0.2        # trade-off: weight of the unperturbed loss
    lr: float = 0.2           # mask SGD learning rate
    momentum: float = 0.9     # mask SGD momentum
    batch_size: int = 128
    iterations: int = 2000
    # batch norm during the mask optimisation: on each batch's own statistics ("train", as both reference codes
    # run it) or on the running ones ("eval"); every other module stays in eval mode, and no parameter changes
    batch_norm: str = "train"

    def __post_init__(self) -> None:
        if self.batch_norm not in ("eval", "train"):
            raise ValueError(f"batch_norm: 'eval' or 'train', not '{self.batch_norm}'")


@dataclass(frozen=True)
class NeuronUnit:
    """One layer of neurons as ANP sees it: the module whose per-neuron parameters are scaled."""

    layer: str          # conv or linear module, or the BatchNorm right after a conv
    size: int           # number of neurons
    weight: str         # parameter masked and perturbed by delta (weight rows or BN scale)
    bias: str | None    # parameter perturbed by xi (bias or BN shift), None when absent


def neuron_units(model: nn.Module, example: torch.Tensor) -> list[NeuronUnit]:
    """The model's hidden neurons in execution order, found by running ``example`` once.

    A conv whose output goes straight into a BatchNorm is represented by that BatchNorm;
    the last linear layer executed (the classifier) is left out.
    """
    trace: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)):
            handles.append(module.register_forward_hook(
                lambda m, inputs, output, name=name: trace.append((name, m, inputs[0], output))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    last_linear = max((i for i, entry in enumerate(trace) if isinstance(entry[1], nn.Linear)), default=-1)
    units: list[NeuronUnit] = []
    for i, (name, module, _inputs, output) in enumerate(trace):
        if i == last_linear or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        following = trace[i + 1] if i + 1 < len(trace) else None
        if following is not None and isinstance(following[1], (nn.BatchNorm1d, nn.BatchNorm2d)) \
                and following[2] is output:
            name, module = following[0], following[1]
            size = module.num_features
        else:
            size = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        bias = f"{name}.bias" if module.bias is not None else None
        units.append(NeuronUnit(name, size, f"{name}.weight", bias))
    return units


def pgd_step(delta: torch.Tensor, grad: torch.Tensor, step: float, eps: float) -> torch.Tensor:
    """One signed ascent step projected onto [-eps, eps] (Algorithm 1, lines 6-9)."""
    return (delta + step * grad.sign()).clamp(-eps, eps)


def _scaled(param: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply each neuron's slice (dim 0) of a parameter by its factor."""
    return param * factor.view(-1, *([1] * (param.dim() - 1)))


class AdversarialNeuronPruning:
    """Mask optimisation of ANP on one model, from ``start`` (by default every mask 1, as ANP starts); the model's own
    parameters are never changed."""

    def __init__(self, model: nn.Module, units: list[NeuronUnit], settings: ANPSettings,
                 start: dict[str, torch.Tensor] | None = None) -> None:
        if not units:
            raise ValueError("the model has no hidden neurons to mask")
        if settings.batch_norm == "train":  # a copy: batch norm in train mode updates its running statistics
            model = copy.deepcopy(model).eval()
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
        else:
            model.eval()
        self.model = model
        self.units = units
        self.settings = settings
        self.params = {name: p.detach() for name, p in model.named_parameters()}
        device = next(iter(self.params.values())).device
        self.masks = {u.layer: (torch.ones(u.size) if start is None else start[u.layer].detach().clone().float())
                      .to(device).requires_grad_(True) for u in units}
        self.optimiser = torch.optim.SGD(list(self.masks.values()), lr=settings.lr, momentum=settings.momentum)

    def _loss(self, x: torch.Tensor, y: torch.Tensor, scale: dict[str, torch.Tensor],
              shift: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Loss of the network with weights scaled by ``scale`` and biases by (1 + ``shift``)."""
        overrides = {}
        for unit in self.units:
            overrides[unit.weight] = _scaled(self.params[unit.weight], scale[unit.layer])
            if shift is not None and unit.bias is not None:
                overrides[unit.bias] = self.params[unit.bias] * (1 + shift[unit.layer])
        return F.cross_entropy(functional_call(self.model, overrides, (x,)), y)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Adversarial neuron perturbations (delta, xi) for the current masks on one batch."""
        eps, steps = self.settings.eps, self.settings.steps
        device = x.device

        def uniform(size: int) -> torch.Tensor:
            return ((torch.rand(size, generator=generator) * 2 - 1) * eps).to(device)

        delta = {u.layer: uniform(u.size) for u in self.units}
        xi = {u.layer: uniform(u.size) for u in self.units}
        masks = {k: m.detach() for k, m in self.masks.items()}
        for _ in range(steps):
            for tensor in (*delta.values(), *xi.values()):
                tensor.requires_grad_(True)
            loss = self._loss(x, y, {k: masks[k] + delta[k] for k in masks}, xi)
            grads = torch.autograd.grad(loss, [*delta.values(), *xi.values()])
            keys = list(delta)
            delta_grads, xi_grads = grads[:len(keys)], grads[len(keys):]
            step_size = eps / steps
            delta = {k: pgd_step(delta[k].detach(), g, step_size, eps) for k, g in zip(keys, delta_grads, strict=True)}
            xi = {k: pgd_step(xi[k].detach(), g, step_size, eps) for k, g in zip(keys, xi_grads, strict=True)}
        return delta, xi

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
        """One iteration of Algorithm 1 on a batch; returns the eq. 8 objective."""
        alpha = self.settings.alpha
        delta, xi = self.perturb(x, y, generator)
        natural = self._loss(x, y, self.masks, None)
        robust = self._loss(x, y, {k: m + delta[k] for k, m in self.masks.items()}, xi)
        loss = alpha * natural + (1 - alpha) * robust
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        with torch.no_grad():
            for mask in self.masks.values():
                mask.clamp_(0.0, 1.0)
        return float(loss.detach())

    def fit(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
            progress: Callable[[int, float], None] | None = None, every: int = 200) -> dict[str, torch.Tensor]:
        """Run ``iterations`` mask updates on batches of the clean set (reshuffled each pass)."""
        n, batch = int(y.shape[0]), self.settings.batch_size
        order = torch.randperm(n, generator=generator).to(x.device)
        start = 0
        for iteration in range(1, self.settings.iterations + 1):
            if start >= n:
                order, start = torch.randperm(n, generator=generator).to(x.device), 0
            idx = order[start:start + batch]
            start += batch
            loss = self.step(x[idx], y[idx], generator)
            if progress is not None and (iteration % every == 0 or iteration == self.settings.iterations):
                progress(iteration, loss)
        return self.mask_values()

    def mask_values(self) -> dict[str, torch.Tensor]:
        """The current masks, detached."""
        return {k: m.detach().clone() for k, m in self.masks.items()}


def prune_by_threshold(masks: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """Neurons to prune: mask <= threshold (Algorithm 1, line 13 keeps m > threshold)."""
    return {k: m <= threshold for k, m in masks.items()}


def flatten_masks(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every neuron's mask in one vector, layer after layer in the masks' order (on the CPU)."""
    return torch.cat([m.detach().flatten().cpu() for m in masks.values()])


def split_masks(units: list[NeuronUnit], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of flatten_masks for the masks of ``units``."""
    sizes = [u.size for u in units]
    if flat.numel() != sum(sizes):
        raise ValueError(f"{flat.numel()} mask values for {sum(sizes)} neurons")
    return {u.layer: part.clone() for u, part in zip(units, torch.split(flat, sizes), strict=True)}


def smallest_first(masks: dict[str, torch.Tensor]) -> list[int]:
    """Every neuron's index in flatten_masks's order, smallest mask first (ties: earlier layer and index first)."""
    return [int(i) for i in torch.sort(flatten_masks(masks), stable=True).indices]


def prune_first(masks: dict[str, torch.Tensor], order: Sequence[int], count: int) -> dict[str, torch.Tensor]:
    """Neurons to prune: the first ``count`` of ``order`` (indices in flatten_masks's order of ``masks``)."""
    chosen = torch.zeros(sum(m.numel() for m in masks.values()), dtype=torch.bool)
    chosen[list(order[:count])] = True
    out, start = {}, 0
    for k, m in masks.items():
        out[k] = chosen[start:start + m.numel()].to(m.device)
        start += m.numel()
    return out


def prune_smallest(masks: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Neurons to prune: the ``count`` smallest masks over all layers (ties: earlier layer and index first)."""
    return prune_first(masks, smallest_first(masks), count)


def prune_by_fraction(masks: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Neurons to prune: the round(fraction * n) smallest masks over all layers."""
    return prune_smallest(masks, round(fraction * sum(m.numel() for m in masks.values())))


@torch.no_grad()
def apply_pruning(model: nn.Module, units: list[NeuronUnit], pruned: dict[str, torch.Tensor]) -> int:
    """Zero the weight (or BN scale) of every pruned neuron in place, keeping its bias; returns the count."""
    params = dict(model.named_parameters())
    total = 0
    for unit in units:
        chosen = pruned[unit.layer].to(params[unit.weight].device)
        params[unit.weight][chosen] = 0.0
        total += int(chosen.sum())
    return total


@contextmanager
def neurons_pruned(model: nn.Module, units: list[NeuronUnit], pruned: dict[str, torch.Tensor]) -> Iterator[int]:
    """``model`` with ``pruned`` applied (apply_pruning) for the duration; yields the count, then restores it."""
    params = dict(model.named_parameters())
    saved = {u.weight: params[u.weight].detach().clone() for u in units}
    try:
        yield apply_pruning(model, units, pruned)
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def prune_within_drop(model: nn.Module, units: list[NeuronUnit], masks: dict[str, torch.Tensor],
                      x: torch.Tensor, y: torch.Tensor, max_drop: float) -> dict[str, torch.Tensor]:
    """Neurons to prune: the most smallest-mask neurons whose pruning keeps clean accuracy on (x, y)
    within ``max_drop`` of the unpruned model's, growing the count until it first fails (every
    count up to 128 neurons, an even grid of 129 counts beyond: a VGG has thousands).

    This picks the cut from clean data alone, like Fine-Pruning's stop rule; ``model`` is
    restored before returning.
    """
    def accuracy_with(count: int) -> float:
        with neurons_pruned(model, units, prune_smallest(masks, count)):
            return accuracy(model, x, y)

    base = accuracy_with(0)
    chosen = last_passing(pruning_levels(sum(u.size for u in units) - 1), accuracy_with, base - max_drop)[0]
    return prune_smallest(masks, chosen or 0)


PRUNING_RULES = ("threshold", "fraction", "max-drop")


@dataclass(frozen=True)
class PruningRule:
    """How ANP's masks become pruned neurons: 'threshold' (the paper's rule, masks <= value),
    'fraction' (that share of all neurons) or 'max-drop' (a clean-accuracy bound)."""

    kind: str = "threshold"
    value: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in PRUNING_RULES:
            raise ValueError(f"unknown pruning rule '{self.kind}' (choose from {', '.join(PRUNING_RULES)})")

    def describe(self) -> str:
        """Short name for tables."""
        if self.kind == "max-drop":
            return f"clean drop <= {100 * self.value:g} pts"
        return f"{self.kind} {self.value:g}"

    def select(self, model: nn.Module, units: list[NeuronUnit], masks: dict[str, torch.Tensor],
               x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The neurons to prune (the clean set (x, y) is used by the max-drop rule only)."""
        if self.kind == "fraction":
            return prune_by_fraction(masks, self.value)
        if self.kind == "max-drop":
            return prune_within_drop(model, units, masks, x, y, self.value)
        return prune_by_threshold(masks, self.value)


@dataclass
class ANPResult:
    """What a pruning rule pruned."""

    pruned: dict[str, torch.Tensor]
    count: int

    def per_layer(self) -> dict[str, int]:
        """Pruned neurons per layer."""
        return {k: int(v.sum()) for k, v in self.pruned.items()}


def anp_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: ANPSettings, generator: torch.Generator,
              progress: Callable[[int, float], None] | None = None
              ) -> tuple[list[NeuronUnit], dict[str, torch.Tensor]]:
    """Optimise ANP's masks on the clean set (x, y); returns the model's neuron units and their masks."""
    units = neuron_units(model, x)
    return units, AdversarialNeuronPruning(model, units, settings).fit(x, y, generator, progress)


def anp_prune(model: nn.Module, units: list[NeuronUnit], masks: dict[str, torch.Tensor], rule: PruningRule,
              x: torch.Tensor, y: torch.Tensor) -> ANPResult:
    """Prune ``model`` in place by ``rule`` from the masks (which may come from another copy of it)."""
    pruned = rule.select(model, units, masks, x, y)
    return ANPResult(pruned, apply_pruning(model, units, pruned))


def anp_accuracies(model: nn.Module, units: list[NeuronUnit], order: Sequence[int], counts: Sequence[int],
                   measure: Callable[[nn.Module], float]) -> list[float]:
    """``measure`` of ``model`` with the first ``count`` neurons of ``order`` pruned, for every count (the model is
    restored after each)."""
    shapes = {u.layer: torch.zeros(u.size, dtype=torch.bool) for u in units}
    out = []
    for count in counts:
        with neurons_pruned(model, units, prune_first(shapes, order, count)):
            out.append(measure(model))
    return out
