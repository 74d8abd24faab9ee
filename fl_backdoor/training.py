"""Local training and evaluation loops over in-memory tensors.

Batches are index slices of tensors already on the device; nothing is assembled
sample by sample and no DataLoader worker is involved.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar, cast, overload

import torch
import torch.nn.functional as F
from torch import nn

from fl_backdoor.errors import ConfigError

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LossTerm = Callable[[nn.Module], torch.Tensor]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class SGDSettings:
    """Optimiser settings of one local training job."""

    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = ()  # epochs after which lr is multiplied by 0.1
    sam_rho: float = 0.0  # > 0: sharpness-aware steps of this radius (sharpness_aware_gradients)
    sam_adaptive: bool = False


@dataclass(frozen=True)
class TrainStats:
    """What a local training job reports."""

    loss: float
    num_examples: int
    num_steps: int


def shuffled_batches(n: int, size: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Index tensors of one shuffled pass over n examples in batches of ``size`` (the last one shorter)."""
    return torch.randperm(n, generator=generator).to(device).split(size)


def batch_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, extra_loss: LossTerm | None) -> torch.Tensor:
    """Cross-entropy of one batch, plus the extra loss term if any."""
    loss = F.cross_entropy(model(xb), yb)
    return loss + extra_loss(model) if extra_loss is not None else loss


def sharpness_aware_gradients(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], rho: float,
                              adaptive: bool) -> None:
    """Turn the gradients g of ``loss_fn`` at w (already in ``.grad``) into its gradients at w + eps.

    eps = rho g / ||g|| (SAM, Foret et al., ICLR 2021), or with ``adaptive``
    eps = rho T^2 g / ||T g||, T = diag(|w|) (ASAM, Kwon et al., ICML 2021, as FT-SAM uses).
    The weights are left exactly as they were; the optimiser then steps with the new gradients.
    """
    params = [p for p in params if p.grad is not None]
    grads = [cast("torch.Tensor", p.grad) for p in params]
    with torch.no_grad():
        scaled = [p.abs() * g if adaptive else g for p, g in zip(params, grads, strict=True)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in scaled]))
        scale = rho / (norm + 1e-12)
        saved = [p.detach().clone() for p in params]
        for p, t in zip(params, scaled, strict=True):
            p.add_((p.abs() * t if adaptive else t) * scale)
    for p in params:
        p.grad = None
    loss_fn().backward()
    with torch.no_grad():
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: SGDSettings,
          generator: torch.Generator, *, batch_transform: BatchTransform | None = None,
          extra_loss: LossTerm | None = None,
          after_step: Callable[[nn.Module], None] | None = None) -> TrainStats:
    """Train ``model`` in place with SGD on (x, y), reshuffling every epoch."""
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    scheduler = (torch.optim.lr_scheduler.MultiStepLR(optimiser, list(settings.lr_milestones), 0.1)
                 if settings.lr_milestones else None)
    n = int(y.shape[0])
    total_loss = torch.zeros((), device=x.device)
    steps = 0
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, settings.batch_size):
            idx = order[start:start + settings.batch_size]
            xb, yb = x[idx], y[idx]
            if batch_transform is not None:
                xb, yb = batch_transform(xb, yb)
            optimiser.zero_grad(set_to_none=True)
            loss = batch_loss(model, xb, yb, extra_loss)
            loss.backward()
            if settings.sam_rho > 0:
                sharpness_aware_gradients(list(model.parameters()), partial(batch_loss, model, xb, yb, extra_loss),
                                          settings.sam_rho, settings.sam_adaptive)
            optimiser.step()
            if after_step is not None:
                after_step(model)
            total_loss += loss.detach()
            steps += 1
        if scheduler is not None:
            scheduler.step()
    return TrainStats(loss=float(total_loss) / max(steps, 1), num_examples=n * settings.epochs, num_steps=steps)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels of x, in eval mode."""
    model.eval()
    out = [model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of x classified as y (0.0 for an empty set)."""
    if y.shape[0] == 0:
        return 0.0
    return float((predict(model, x, batch_size) == y).float().mean())


def layer_weight(model: nn.Module, layer: str) -> torch.Tensor:
    """The weight parameter of the model's submodule ``layer`` (a conv or linear layer)."""
    weight = model.get_submodule(layer).weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"layer {layer} has no weight tensor")
    return weight


def l2_on_layer(layer: str, strength: float) -> LossTerm:
    """Loss term strength * ||W||^2 on one layer's weight (the paper's Fig. 10 regulariser)."""
    def term(model: nn.Module) -> torch.Tensor:
        return strength * layer_weight(model, layer).pow(2).sum()
    return term


@overload
def to_device(item: ModuleT, device: torch.device) -> ModuleT: ...


@overload
def to_device(item: torch.Tensor, device: torch.device) -> torch.Tensor: ...


def to_device(item: nn.Module | torch.Tensor, device: torch.device) -> nn.Module | torch.Tensor:
    """Move a model or an image batch to the device in channels-last layout.

    Convolutions on CPU (oneDNN) and GPU run 1.5-3x faster on channels-last images and
    weights than on the default layout; slices of a channels-last tensor keep the layout.
    """
    if isinstance(item, nn.Module):
        # two calls, as torch's stubs type Module.to(device=, memory_format=) as no overload; the same result
        return item.to(device).to(memory_format=torch.channels_last)
    if item.dim() == 4:
        return item.to(device).contiguous(memory_format=torch.channels_last)
    return item.to(device)


def share_gpus_with_workers() -> None:
    """Let Ray workers that reserve no GPU still see this machine's GPUs (call before Ray starts).

    Ray hides the GPUs (CUDA_VISIBLE_DEVICES="") from every task and actor with
    num_gpus=0, which is what a simulation's client actors reserve unless client-gpus
    is set, and what a sweep's experiments reserve; on a GPU machine they would all
    train on the CPU.  With this, device 'auto' finds the GPU in every process (they
    share it); client-gpus > 0 still makes Ray place actors on GPUs itself.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' where torch sees no GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device=cuda, but torch {torch.__version__} sees no CUDA device on this machine; "
                          f"use device=auto or device=cpu")
    return torch.device(name)
