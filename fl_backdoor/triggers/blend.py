"""The blended-injection trigger (Chen et al., "Targeted backdoor attacks on deep learning systems using data
poisoning", 2017, Sec. 4.2): x' = (1 - alpha) x + alpha k, kind ``blend``.

The key pattern k is random noise, one value in [0, 1) per pixel (the same in every
channel), drawn from a generator seeded by ``blend-seed``, so it is reproduced, never
downloaded; the paper's random-pattern key is of this kind.  ``blend-alpha`` is the
blend ratio (the paper poisons with alpha 0.2 and reports its attack at test ratios of
0.2 and above).  It covers the whole image, so no pixel is left exactly as it was, and
it has no place: ``trigger-origin`` must stay empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import Setting
from . import TRIGGERS, Trigger

BLEND_ALPHA = Setting("blend-alpha", 0.2, "blend trigger: weight of the noise pattern (Chen et al.'s 0.2).", "attack",
                      low=0.0, high=1.0, low_open=True, added=True)
BLEND_SEED = Setting("blend-seed", 0, "blend trigger: seed of its noise pattern.", "attack", low=0, added=True)


@dataclass(frozen=True)
class BlendTrigger(Trigger):
    """A pattern of the image's size mixed in with weight alpha."""

    pattern: torch.Tensor  # (H, W), values in [0, 1]
    alpha: float

    def apply_(self, images: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern.to(device=images.device, dtype=images.dtype)
        return images.mul_(1.0 - self.alpha).add_(self.alpha * pattern)

    def outside(self, image_size: int) -> list[tuple[int, int]]:
        h, w = self.pattern.shape
        return [] if (h, w) == (image_size, image_size) else [(h - 1, w - 1)]


def noise_pattern(image_size: int, seed: int) -> torch.Tensor:
    """The key pattern: uniform noise of the image's size from a seeded generator."""
    return torch.rand((image_size, image_size), generator=torch.Generator().manual_seed(seed))


@TRIGGERS.register("blend", settings=(BLEND_ALPHA, BLEND_SEED))
def blend(image_size: int, origin: tuple[int, ...], piece: int | None, blend_alpha: float = 0.2,
          blend_seed: int = 0) -> BlendTrigger:
    """Seeded noise blended in with weight blend-alpha."""
    if origin:
        raise ValueError("the blend trigger covers the whole image: leave trigger-origin empty")
    return BlendTrigger(noise_pattern(image_size, blend_seed), blend_alpha)
