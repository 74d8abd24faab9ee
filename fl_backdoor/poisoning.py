"""Poisoning an attacker's data with a trigger, in the two targeting modes.

* victim -> attack label (the paper): the attacker's victim-label images get the
  trigger and the attack label, and it trains on its clean data plus these copies.
* all-to-one (DBA): in every batch the first ``n`` samples get the trigger and the
  target label.
"""

from __future__ import annotations

import torch

from .triggers import Trigger


def victim_copies(x: torch.Tensor, y: torch.Tensor, victim: int, attack: int,
                  trigger: Trigger) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean data plus triggered copies of its victim-label images relabelled to ``attack``.

    With a semantic trigger the victim images that have the feature are relabelled in
    place instead (a copy would be the same image under both labels).
    """
    chosen = (y == victim) & trigger.selects(x)
    if trigger.semantic:
        relabelled = y.clone()
        relabelled[chosen] = attack
        return x, relabelled
    poisoned = trigger.apply(x[chosen])
    labels = torch.full((poisoned.shape[0],), attack, dtype=y.dtype, device=y.device)
    return torch.cat([x, poisoned]), torch.cat([y, labels])


class BatchPoisoner:
    """Batch transform of the all-to-one mode: poison the first ``count`` samples of a batch."""

    def __init__(self, trigger: Trigger, target: int, count: int) -> None:
        self.trigger = trigger
        self.target = target
        self.count = count

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Poison in place (batches are fresh copies sliced from the client's tensors)."""
        n = min(self.count, yb.shape[0])
        self.trigger.apply_(xb[:n])
        yb[:n] = self.target
        return xb, yb
