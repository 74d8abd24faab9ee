"""I-BAU, adversarial unlearning of backdoors via implicit hypergradient (Zeng et al., ICLR 2022).

The backdoor is treated as the worst universal perturbation delta of the clean data, and
the model is trained to resist it: min_theta max_delta L(theta, delta).  Each I-BAU round:

1. inner maximisation: delta (one image's shape, from zero) ascends the cross-entropy
   of the model's own predictions on x + delta, minus 0.001 ||delta||^2, by SGD with
   step ``perturbation_lr`` over one pass of the clean batches; here it is projected
   onto the L2 ball of radius ``norm`` after every step (the reference code's bound,
   left commented out there);
2. unlearning: for every clean batch, the outer loss is the cross-entropy of the batch
   with delta added to a ``portion`` of its images; its gradient for theta is the implicit
   hypergradient through the inner problem's fixed point delta = Phi(delta, theta),
   Phi = delta - ``inner_step`` * grad_delta L_inner, computed by ``fixed_point_steps``
   iterations of the fixed-point method (Grazzi et al. 2020), then an Adam step.

Settings are those of the reference code as BackdoorBench configures it: 5 rounds, K = 5,
Adam with lr 1e-4, batches of 256, perturbation SGD lr 10, 1% of each batch perturbed
(at least one image here), inner step 0.1 on the first clean batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fl_backdoor.training import TrainStats, shuffled_batches


@dataclass(frozen=True)
class IBAUSettings:
    """One I-BAU run (the reference code's values by default)."""

    rounds: int = 5
    fixed_point_steps: int = 5
    lr: float = 1e-4
    batch_size: int = 256
    perturbation_lr: float = 10.0
    norm: float = 10.0
    inner_step: float = 0.1
    regularizer: float = 0.001
    portion: float = 0.01


def project_l2(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """delta scaled onto the L2 ball of ``radius`` if it lies outside (in place); returns it."""
    norm = float(torch.linalg.vector_norm(delta))
    if norm > radius:
        delta.mul_(radius / norm)
    return delta


def universal_perturbation(model: nn.Module, x: torch.Tensor, settings: IBAUSettings,
                           generator: torch.Generator) -> torch.Tensor:
    """Step 1: the perturbation of one image's shape that most changes the model's predictions on x."""
    model.eval()
    delta = torch.zeros((1, *x.shape[1:]), device=x.device, requires_grad=True)
    optimiser = torch.optim.SGD([delta], lr=settings.perturbation_lr)
    for idx in shuffled_batches(x.shape[0], settings.batch_size, generator, x.device):
        xb = x[idx]
        with torch.no_grad():
            own = model(xb).argmax(1)
        loss = -F.cross_entropy(model(xb + delta), own) + settings.regularizer * delta.pow(2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            project_l2(delta, settings.norm)
    return delta.detach()


def hypergradient(params: list[torch.Tensor], delta: torch.Tensor,
                  outer_loss: Callable[[torch.Tensor], torch.Tensor],
                  inner_loss: Callable[[torch.Tensor], torch.Tensor], steps: int, inner_step: float
                  ) -> tuple[float, list[torch.Tensor]]:
    """The outer loss and its gradient for params at the inner fixed point delta = Phi(delta),
    Phi = delta - inner_step grad L_inner.

    dL/dtheta = dL/dtheta (direct) + (dPhi/dtheta)^T v with v = sum_{k<steps} ((dPhi/ddelta)^T)^k dL/ddelta,
    the fixed-point method's truncation of (I - dPhi/ddelta)^-T dL/ddelta.
    """
    delta = delta.detach().requires_grad_(True)
    outer = outer_loss(delta)
    *direct, outer_delta = torch.autograd.grad(outer, [*params, delta], allow_unused=True)
    outer_delta = torch.zeros_like(delta) if outer_delta is None else outer_delta
    mapped = delta - inner_step * torch.autograd.grad(inner_loss(delta), delta, create_graph=True)[0]
    v = torch.zeros_like(delta)
    for _ in range(steps):
        v = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)[0] + outer_delta
    implicit = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    grads = [(d if d is not None else torch.zeros_like(p)) + (i if i is not None else torch.zeros_like(p))
             for p, d, i in zip(params, direct, implicit, strict=True)]
    return float(outer.detach()), grads


def ibau_unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: IBAUSettings,
                 generator: torch.Generator, keep: Callable[[nn.Module], bool] | None = None) -> TrainStats:
    """I-BAU's rounds on the clean data (x, y), in place; the model stays in eval mode (as the reference).

    With ``keep``, each round is kept only if ``keep(model)`` says so after it; the first that is not is undone
    and ends the unlearning (a clean-accuracy budget: defenses/budget.py).  ``num_steps`` counts the kept rounds'
    steps.
    """
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=settings.lr)
    first = torch.randperm(x.shape[0], generator=generator).to(x.device)[:settings.batch_size]
    x0, y0 = x[first], y[first]

    def inner_loss(delta: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(model(x0 + delta), y0) + settings.regularizer * delta.pow(2).sum()

    total, steps = 0.0, 0
    for _ in range(settings.rounds):
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if keep is not None else {}
        round_loss, round_steps = 0.0, 0
        delta = universal_perturbation(model, x, settings, generator)
        for idx in shuffled_batches(x.shape[0], settings.batch_size, generator, x.device):
            xb, yb = x[idx], y[idx]
            chosen = torch.randperm(len(idx), generator=generator)[:max(1, int(len(idx) * settings.portion))]
            patch = torch.zeros((len(idx), 1, 1, 1), device=x.device)
            patch[chosen.to(x.device)] = 1.0

            def outer_loss(d: torch.Tensor, xb: torch.Tensor = xb, yb: torch.Tensor = yb,
                           patch: torch.Tensor = patch) -> torch.Tensor:
                return F.cross_entropy(model(xb + patch * d), yb)

            loss, grads = hypergradient(params, delta, outer_loss, inner_loss, settings.fixed_point_steps,
                                        settings.inner_step)
            optimiser.zero_grad()
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimiser.step()
            round_loss += loss
            round_steps += 1
        if keep is not None and not keep(model):
            model.load_state_dict(saved)
            break
        total, steps = total + round_loss, steps + round_steps
    rounds = steps // max(math.ceil(x.shape[0] / settings.batch_size), 1)
    return TrainStats(loss=total / max(steps, 1), num_examples=int(x.shape[0]) * rounds, num_steps=steps)
