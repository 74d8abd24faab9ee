"""Backdoor triggers, one file per kind, registered by name (config key ``trigger``).

A trigger stamps a pattern onto (N, C, H, W) or (C, H, W) images in [0, 1].  A
trigger kind is a function ``(image_size, origin, piece) -> Trigger``:

* ``origin``: ``(row, col)`` of the pattern's top-left pixel (empty = the kind's place);
* ``piece``: for a distributed trigger (registered with ``pieces=k``, e.g. DBA's four
  local triggers), the piece an attacker holds; None is the whole pattern, used at test
  time.

A new kind is one file in this package::

    @TRIGGERS.register("spot")
    def spot(image_size: int, origin: tuple[int, ...], piece: int | None) -> Trigger: ...

A kind with settings of its own declares them when it registers
(``settings=(BLEND_ALPHA, BLEND_SEED)``, fl_backdoor.settings) and takes them as keyword
arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..registry import Registry


class Trigger(ABC):
    """A pattern stamped onto images, or (``semantic``) a feature some images already have.

    A semantic trigger adds no pixels: ``apply`` leaves images as they are, and
    ``selects`` says which images carry the feature; poisoning relabels those and the AA
    is measured on them.
    """

    semantic: ClassVar[bool] = False

    def selects(self, images: torch.Tensor) -> torch.Tensor:
        """A boolean per image (N, C, H, W): whether the trigger applies to it (every image for a stamped one)."""
        return torch.ones(images.shape[0], dtype=torch.bool, device=images.device)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """A copy of the images carrying the trigger."""
        out = images.clone()
        self.apply_(out)
        return out

    @abstractmethod
    def apply_(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger in place and return the same tensor."""

    def outside(self, image_size: int) -> list[tuple[int, int]]:
        """Positions the trigger would put outside an image of this size (none by default)."""
        return []


@dataclass(frozen=True)
class PixelTrigger(Trigger):
    """Pixels set to ``value`` in every channel; coordinates are ``(row, col)``."""

    pixels: tuple[tuple[int, int], ...]
    value: float = 1.0

    def apply_(self, images: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor([p[0] for p in self.pixels], dtype=torch.long)
        cols = torch.tensor([p[1] for p in self.pixels], dtype=torch.long)
        images[..., rows, cols] = self.value
        return images

    def union(self, other: PixelTrigger) -> PixelTrigger:
        """The trigger made of both sets of pixels."""
        return PixelTrigger(tuple(sorted(set(self.pixels) | set(other.pixels))), self.value)

    def outside(self, image_size: int) -> list[tuple[int, int]]:
        return [p for p in self.pixels if not (0 <= p[0] < image_size and 0 <= p[1] < image_size)]


TriggerKind = Callable[..., Trigger]  # (image_size, origin, piece, **settings)
TRIGGERS: Registry[TriggerKind] = Registry("trigger", __name__, choices={"trigger": Registry.names})


def trigger_for(name: str, image_size: int, origin: tuple[int, ...] = (), piece: int | None = None,
                config: Mapping[str, Any] | None = None) -> Trigger:
    """The trigger named in the config: the whole pattern, or one piece of a distributed trigger.

    A kind registered with settings also gets their values from ``config`` (a flat run
    config), as keyword arguments named with underscores.
    """
    wanted = [s.key for s in TRIGGERS.settings(name)]
    options = {k.replace("-", "_"): config[k] for k in wanted} if config is not None else {}
    return TRIGGERS[name](image_size, origin, piece, **options)


def trigger_pieces(name: str) -> int:
    """How many pieces a distributed trigger has (0 for a trigger that is not distributed)."""
    return int(TRIGGERS.meta(name).get("pieces", 0))
