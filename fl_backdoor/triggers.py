"""Backdoor triggers: BadNets pixel patterns and DBA's distributed pieces.

A trigger is a set of pixel positions set to a value (1.0 = white, inputs in
[0, 1]) in every channel.  Coordinates are ``(row, col)``.

Pixel patterns (the paper's Fig. 1) live on a 3x3 grid whose top-left pixel is
at ``(H - 4, W - 4)`` by default, one pixel in from the bottom-right corner::

    pixel-1  . . .    pixel-3  . . x    pixel-5  x . x    pixel-7  x x x    pixel-9  x x x
             . x .             . x .             . x .             . x .             x x x
             . . .             x . .             x . x             x x x             x x x

DBA pieces are the reference code's 1xW bars (REFERENCE.md); the test-time global
trigger is their union.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_PIXEL_PATTERNS = {
    1: [(1, 1)],
    3: [(0, 2), (1, 1), (2, 0)],
    5: [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)],
    7: [(0, 0), (0, 1), (0, 2), (1, 1), (2, 0), (2, 1), (2, 2)],
    9: [(r, c) for r in range(3) for c in range(3)],
}
# DBA reference: four local triggers per image size, as (row, first col, last col).
_DBA_PIECES = {
    28: [(0, 0, 3), (0, 6, 9), (3, 0, 3), (3, 6, 9)],
    32: [(0, 0, 5), (0, 9, 14), (4, 0, 5), (4, 9, 14)],
}


@dataclass(frozen=True)
class Trigger:
    """Pixels set to ``value`` in every channel."""

    pixels: tuple[tuple[int, int], ...]
    value: float = 1.0

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """A copy of (N, C, H, W) or (C, H, W) images carrying the trigger."""
        out = images.clone()
        self.apply_(out)
        return out

    def apply_(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger in place and return the same tensor."""
        rows = torch.tensor([p[0] for p in self.pixels], dtype=torch.long)
        cols = torch.tensor([p[1] for p in self.pixels], dtype=torch.long)
        images[..., rows, cols] = self.value
        return images

    def union(self, other: "Trigger") -> "Trigger":
        """The trigger made of both sets of pixels."""
        return Trigger(tuple(sorted(set(self.pixels) | set(other.pixels))), self.value)


def pixel_pattern(num_pixels: int, image_size: int, origin: tuple[int, ...] = ()) -> Trigger:
    """One of the paper's 1/3/5/7/9-pixel patterns."""
    if num_pixels not in _PIXEL_PATTERNS:
        raise ValueError(f"no {num_pixels}-pixel pattern (choose 1, 3, 5, 7 or 9)")
    r0, c0 = origin or (image_size - 4, image_size - 4)
    return Trigger(tuple((r0 + r, c0 + c) for r, c in _PIXEL_PATTERNS[num_pixels]))


def dba_piece(index: int, image_size: int, origin: tuple[int, ...] = ()) -> Trigger:
    """DBA local trigger ``index`` (0-3) for 28x28 or 32x32 images."""
    if image_size not in _DBA_PIECES:
        raise ValueError(f"DBA triggers are defined for 28x28 and 32x32 images, not {image_size}x{image_size}")
    r0, c0 = origin or (0, 0)
    row, first, last = _DBA_PIECES[image_size][index]
    return Trigger(tuple((r0 + row, c0 + c) for c in range(first, last + 1)))


def dba_global(image_size: int, origin: tuple[int, ...] = ()) -> Trigger:
    """The union of the four DBA pieces, used at test time."""
    trigger = dba_piece(0, image_size, origin)
    for i in range(1, 4):
        trigger = trigger.union(dba_piece(i, image_size, origin))
    return trigger


def trigger_for(name: str, image_size: int, origin: tuple[int, ...] = (), piece: int | None = None) -> Trigger:
    """The trigger named in the config: 'pixel-N', or 'dba' (a piece, or the union when piece is None)."""
    if name == "dba":
        return dba_global(image_size, origin) if piece is None else dba_piece(piece, image_size, origin)
    return pixel_pattern(int(name.split("-")[1]), image_size, origin)
