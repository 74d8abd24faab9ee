"""The stop rules of the cleansing phases; they see clean accuracy only, never the attack set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def stop_at_drop(candidates: Sequence[T], accuracy_of: Callable[[T], float], baseline: float, max_drop: float,
                 per_step: bool = False, keep_crossing: bool = False) -> tuple[T | None, list[tuple[T, float]]]:
    """Walk the candidates in order until accuracy drops more than ``max_drop``.

    Used for pruning (candidates = numbers of pruned neurons, growing) and for AW
    (candidates = Delta values, shrinking).  The drop is measured from ``baseline``
    (cumulative), or with ``per_step`` from the previous candidate's accuracy (the
    first candidate is compared with ``baseline``).  Returns the chosen candidate (the
    last one that passed, or with ``keep_crossing`` the one that crossed, as
    Algorithm 1 leaves the model; None if none qualifies) and the (candidate,
    accuracy) pairs measured; nothing after the crossing is measured.
    """
    chosen: T | None = None
    seen: list[tuple[T, float]] = []
    reference = baseline
    for candidate in candidates:
        accuracy = accuracy_of(candidate)
        seen.append((candidate, accuracy))
        if accuracy < reference - max_drop:
            if keep_crossing:
                chosen = candidate
            break
        chosen = candidate
        if per_step:
            reference = accuracy
    return chosen, seen


def last_passing(candidates: Sequence[T], accuracy_of: Callable[[T], float], threshold: float
                 ) -> tuple[T | None, list[tuple[T, float]]]:
    """The last candidate, in order, whose accuracy stays at or above a fixed ``threshold``.

    The cumulative rule of :func:`stop_at_drop` with the threshold given directly
    (Fine-Pruning and ANP's clean-drop rule).
    """
    return stop_at_drop(candidates, accuracy_of, threshold, 0.0)


class Patience:
    """Fine-tuning stop: after ``patience`` rounds without beating the best accuracy, or at ``max_rounds``.

    The baseline is the accuracy before the first round (round 0).
    """

    def __init__(self, patience: int, max_rounds: int, baseline: float) -> None:
        self.patience = patience
        self.max_rounds = max_rounds
        self.best = baseline
        self.best_round = 0
        self.rounds = 0

    def update(self, accuracy: float) -> bool:
        """Record one round's accuracy; True when it is a new best."""
        self.rounds += 1
        if accuracy > self.best:
            self.best, self.best_round = accuracy, self.rounds
            return True
        return False

    @property
    def stop(self) -> bool:
        """Whether fine-tuning should end now."""
        return self.rounds >= self.max_rounds or self.rounds - self.best_round >= self.patience

    def kept_round(self, keep: str) -> int:
        """The round whose model goes on: the last one ('last') or the best one, round 0 included ('best')."""
        return self.best_round if keep == "best" else self.rounds
