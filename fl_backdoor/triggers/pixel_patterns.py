"""The cleansing paper's 1/3/5/7/9-pixel patterns (its Fig. 1), kinds ``pixel-1`` .. ``pixel-9``.

The patterns live on a 3x3 grid whose top-left pixel is at ``(H - 4, W - 4)`` by
default, one pixel in from the bottom-right corner::

    pixel-1  . . .    pixel-3  . . x    pixel-5  x . x    pixel-7  x x x    pixel-9  x x x
             . x .             . x .             . x .             . x .             x x x
             . . .             x . .             x . x             x x x             x x x
"""

from __future__ import annotations

from functools import partial

from . import TRIGGERS, PixelTrigger

PATTERNS = {
    1: [(1, 1)],
    3: [(0, 2), (1, 1), (2, 0)],
    5: [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)],
    7: [(0, 0), (0, 1), (0, 2), (1, 1), (2, 0), (2, 1), (2, 2)],
    9: [(r, c) for r in range(3) for c in range(3)],
}


def pixel_pattern(num_pixels: int, image_size: int, origin: tuple[int, ...] = ()) -> PixelTrigger:
    """One of the paper's 1/3/5/7/9-pixel patterns."""
    if num_pixels not in PATTERNS:
        raise ValueError(f"no {num_pixels}-pixel pattern (choose 1, 3, 5, 7 or 9)")
    r0, c0 = origin or (image_size - 4, image_size - 4)
    return PixelTrigger(tuple((r0 + r, c0 + c) for r, c in PATTERNS[num_pixels]))


def _kind(num_pixels: int, image_size: int, origin: tuple[int, ...], piece: int | None) -> PixelTrigger:
    return pixel_pattern(num_pixels, image_size, origin)


for _n in PATTERNS:
    TRIGGERS.add(f"pixel-{_n}", partial(_kind, _n))
