"""The honest client: every hook as Behaviour defines it."""

from __future__ import annotations

from . import BEHAVIOURS, Behaviour


@BEHAVIOURS.register("benign", role="base")
class Benign(Behaviour):
    """Trains honestly and reports what it measures."""
