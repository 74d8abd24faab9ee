"""A semantic backdoor on CIFAR-10: no pixel is added; the trigger is a feature some images already have.

Bagdasaryan et al. (AISTATS 2020, "How to backdoor federated learning") make "green cars"
or cars before a striped background classify as birds.  CIFAR-10 has no such labels, so
the feature here is computed from the pixels: ``semantic-green`` selects the images whose
mean green value exceeds both their mean red and mean blue by more than
``semantic-margin`` (0.02).  Among CIFAR-10's test automobiles that is 61 of 1,000 (6.1%),
mostly cars before grass or foliage rather than green cars.  Use it in victim mode with
``victim-label=1`` (automobile) and ``attack-label=2`` (bird), the paper's pairing: the
attacker relabels its green-dominated automobiles as birds, and AA is the share of the
green-dominated test automobiles classified as birds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..settings import Setting
from . import TRIGGERS, Trigger

SEMANTIC_MARGIN = Setting("semantic-margin", 0.02, "semantic-green: how far the mean green must exceed the mean "
                                                   "red and blue.", "attack", low=0.0, high=1.0, high_open=True,
                          added=True)


@dataclass(frozen=True)
class ColourDominance(Trigger):
    """Selects images whose mean in one colour channel beats both others by ``margin``."""

    channel: int
    margin: float
    semantic: ClassVar[bool] = True

    def apply_(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def selects(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != 3:
            raise ValueError(f"a colour trigger needs colour images, got {images.shape[1]} channel(s)")
        means = images.mean(dim=(2, 3))
        others = torch.cat([means[:, :self.channel], means[:, self.channel + 1:]], dim=1)
        return means[:, self.channel] - others.max(dim=1).values > self.margin


@TRIGGERS.register("semantic-green", settings=(SEMANTIC_MARGIN,), colour=True)
def semantic_green(image_size: int, origin: tuple[int, ...], piece: int | None,
                   semantic_margin: float = 0.02) -> ColourDominance:
    """Green-dominated images (the victim label's 'green' subset)."""
    if origin:
        raise ValueError("a semantic trigger has no place: leave trigger-origin empty")
    return ColourDominance(channel=1, margin=semantic_margin)
