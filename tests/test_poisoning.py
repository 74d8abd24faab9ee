"""Poisoned data: which samples get the trigger, and which label."""

import torch

from fl_backdoor.poisoning import BatchPoisoner, victim_copies
from fl_backdoor.triggers.pixel_patterns import pixel_pattern


def test_victim_copies_append_relabelled_triggered_victims():
    x = torch.rand(10, 1, 28, 28) * 0.5
    y = torch.tensor([9, 1, 9, 2, 3, 9, 4, 5, 6, 7])
    trigger = pixel_pattern(1, 28)
    xp, yp = victim_copies(x, y, victim=9, attack=0, trigger=trigger)
    assert xp.shape[0] == 13 and yp.tolist() == y.tolist() + [0, 0, 0]
    assert torch.equal(xp[:10], x), "the clean data stays as it is"
    victims = x[y == 9]
    for k in range(3):
        expected = victims[k].clone()
        expected[:, 25, 25] = 1.0
        assert torch.equal(xp[10 + k], expected)


def test_batch_poisoner_poisons_first_n_only():
    xb = torch.zeros(8, 3, 32, 32)
    yb = torch.arange(8)
    trigger = pixel_pattern(5, 32)
    xo, yo = BatchPoisoner(trigger, target=2, count=3)(xb, yb)
    assert yo.tolist() == [2, 2, 2, 3, 4, 5, 6, 7]
    assert xo[:3, :, 28, 28].eq(1.0).all() and xo[:3].sum() == 3 * 3 * 5
    assert xo[3:].sum() == 0
