"""Triggers land on exactly the documented pixels."""

import pytest
import torch

from fl_backdoor.triggers import trigger_for
from fl_backdoor.triggers.dba import dba_global, dba_piece
from fl_backdoor.triggers.pixel_patterns import pixel_pattern


def stamped(trigger, channels=1, size=28):
    images = torch.zeros(2, channels, size, size)
    out = trigger.apply(images)
    assert images.abs().sum() == 0, "apply must not modify its input"
    return {(r, c) for r, c in (out[0, 0] == 1.0).nonzero().tolist()}, out


@pytest.mark.parametrize("size", [28, 32])
def test_pixel_patterns_exact(size):
    o = size - 4
    expected = {
        1: {(o + 1, o + 1)},
        3: {(o, o + 2), (o + 1, o + 1), (o + 2, o)},
        5: {(o, o), (o, o + 2), (o + 1, o + 1), (o + 2, o), (o + 2, o + 2)},
        7: {(o, o), (o, o + 1), (o, o + 2), (o + 1, o + 1), (o + 2, o), (o + 2, o + 1), (o + 2, o + 2)},
        9: {(o + r, o + c) for r in range(3) for c in range(3)},
    }
    for n, pixels in expected.items():
        got, _ = stamped(pixel_pattern(n, size), size=size)
        assert got == pixels, n
        assert len(got) == n


def test_dba_pieces_match_reference_coordinates():
    mnist = {0: {(0, c) for c in range(4)}, 1: {(0, c) for c in range(6, 10)},
             2: {(3, c) for c in range(4)}, 3: {(3, c) for c in range(6, 10)}}
    cifar = {0: {(0, c) for c in range(6)}, 1: {(0, c) for c in range(9, 15)},
             2: {(4, c) for c in range(6)}, 3: {(4, c) for c in range(9, 15)}}
    for size, pieces in ((28, mnist), (32, cifar)):
        for i, pixels in pieces.items():
            got, _ = stamped(dba_piece(i, size), size=size)
            assert got == pixels
        got, _ = stamped(dba_global(size), size=size)
        assert got == set().union(*pieces.values())


def test_trigger_sets_every_channel_and_nothing_else():
    images = torch.rand(3, 3, 32, 32) * 0.5
    trigger = trigger_for("dba", 32, piece=1)
    out = trigger.apply(images)
    changed = (out != images).any(dim=(0, 1)).nonzero().tolist()
    assert {tuple(p) for p in changed} == set(trigger.pixels)
    for r, c in trigger.pixels:
        assert torch.all(out[:, :, r, c] == 1.0)


def test_origin_moves_the_pattern():
    got, _ = stamped(pixel_pattern(9, 28, (2, 5)))
    assert got == {(2 + r, 5 + c) for r in range(3) for c in range(3)}
    got, _ = stamped(dba_piece(3, 28, (10, 10)))
    assert got == {(13, c) for c in range(16, 20)}


def test_unknown_pattern_is_rejected():
    with pytest.raises(ValueError):
        pixel_pattern(4, 28)
