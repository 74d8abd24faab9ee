"""DBA's distributed trigger (kind ``dba``): four local 1xW bars, the union at test time.

The pieces are the DBA reference code's (REFERENCE.md), as (row, first col, last col)
per image size.
"""

from __future__ import annotations

from . import TRIGGERS, PixelTrigger

PIECES = {
    28: [(0, 0, 3), (0, 6, 9), (3, 0, 3), (3, 6, 9)],
    32: [(0, 0, 5), (0, 9, 14), (4, 0, 5), (4, 9, 14)],
}


def dba_piece(index: int, image_size: int, origin: tuple[int, ...] = ()) -> PixelTrigger:
    """DBA local trigger ``index`` (0-3) for 28x28 or 32x32 images."""
    if image_size not in PIECES:
        raise ValueError(f"DBA triggers are defined for 28x28 and 32x32 images, not {image_size}x{image_size}")
    r0, c0 = origin or (0, 0)
    row, first, last = PIECES[image_size][index]
    return PixelTrigger(tuple((r0 + row, c0 + c) for c in range(first, last + 1)))


def dba_global(image_size: int, origin: tuple[int, ...] = ()) -> PixelTrigger:
    """The union of the four DBA pieces, used at test time."""
    trigger = dba_piece(0, image_size, origin)
    for i in range(1, 4):
        trigger = trigger.union(dba_piece(i, image_size, origin))
    return trigger


@TRIGGERS.register("dba", pieces=4)
def dba(image_size: int, origin: tuple[int, ...], piece: int | None) -> PixelTrigger:
    """A DBA piece, or (piece None) the global trigger."""
    return dba_global(image_size, origin) if piece is None else dba_piece(piece, image_size, origin)


@TRIGGERS.register("dba-global")
def dba_whole(image_size: int, origin: tuple[int, ...], piece: int | None) -> PixelTrigger:
    """The four DBA pieces as one trigger held whole (DBA's centralized attack)."""
    return dba_global(image_size, origin)
