"""Neurotoxin (Zhang et al., ICML 2022, Algorithm 1): poison only the coordinates benign clients use least.

Benign clients' updates concentrate on a few coordinates; a backdoor written into the
others is not overwritten by them, so it lasts after the attacker leaves.  In each attack
round the attacker

1. estimates the benign update: the last global update it saw, G_t - G_(t-1) (the
   paper's "gradient from the previous round"; the client keeps G_(t-1) in its memory,
   Flower's ``Context.state``).  In its first round, with no earlier global model, it
   takes the gradient of its own clean data at G_t instead, as the reference code does;
2. keeps the ``neurotoxin-ratio`` share of all coordinates (over every layer together)
   with the smallest magnitude in that estimate, and masks the rest out of every
   gradient of its poisoned training (the reference's ``gradmask_ratio``: its CIFAR-10
   runs use 0.99, i.e. the top 1% is left alone).

The model-replacement boost (``gamma``) applies as for the plain attacker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fl_backdoor.federation_data import client_data
from fl_backdoor.masks import NeuronMask
from fl_backdoor.settings import Setting

from . import BEHAVIOURS, Behaviour, Job, TrainingPlan

RATIO = Setting("neurotoxin-ratio", 0.99, "neurotoxin: share of coordinates the attacker may change, those the last "
                                          "global update moved least (the reference's 0.99).", "attack", low=0.0,
                high=1.0, low_open=True, added=True)

PREVIOUS = "neurotoxin/previous-global/"


def smallest_mask(estimate: list[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """Per tensor, 1 where the coordinate is among the ``keep`` share of smallest |estimate| over all tensors."""
    flat = torch.cat([e.abs().flatten() for e in estimate])
    kept = max(1, round(keep * flat.numel()))
    threshold = flat.kthvalue(kept).values
    # ties at the threshold: count them in index order, so exactly ``kept`` coordinates are kept
    allowed = flat < threshold
    ties = torch.nonzero(flat == threshold).flatten()[: kept - int(allowed.sum())]
    allowed[ties] = True
    out, start = [], 0
    for e in estimate:
        out.append(allowed[start:start + e.numel()].view_as(e).to(e.dtype))
        start += e.numel()
    return out


def clean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The gradient of the mean loss on (x, y) at the model's weights, per parameter."""
    model.zero_grad(set_to_none=True)
    for start in range(0, x.shape[0], batch_size):
        loss = F.cross_entropy(model(x[start:start + batch_size]), y[start:start + batch_size], reduction="sum")
        (loss / x.shape[0]).backward()
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


@BEHAVIOURS.register("neurotoxin", settings=(RATIO,), role="adaptive")
class Neurotoxin(Behaviour):
    """Masks its poisoned gradients to the coordinates the last global update moved least."""

    def training(self, job: Job, plan: TrainingPlan, model: nn.Module, mask: NeuronMask | None) -> TrainingPlan:
        names = [name for name, _ in model.named_parameters()]
        current = [p.detach().clone() for p in model.parameters()]
        previous = [job.memory.get(PREVIOUS + name) for name in names]
        job.memory.update({PREVIOUS + name: value.cpu() for name, value in zip(names, current, strict=True)})
        if not job.attacking:
            return plan
        known = all(p is not None for p in previous)
        print(f"neurotoxin: client {self.client_id}, round {job.server_round}: mask from "
              f"{'the last global update' if known else 'its clean gradient (no earlier global model seen)'}",
              flush=True)
        if known:
            estimate = [c - p.to(c.device) for c, p in zip(current, previous, strict=True) if p is not None]
        else:
            x, y = client_data(self.cfg, self.client_id, plan.x.device)
            estimate = clean_gradient(model, x, y, self.cfg.eval_batch_size)
        for param, allowed in zip(model.parameters(), smallest_mask(estimate, RATIO.of(self.cfg)),
                                  strict=True):
            param.register_hook(lambda grad, allowed=allowed: grad * allowed)
        return plan
