"""The stop rules of the cleansing phases; they see clean accuracy only, never the attack set."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def last_passing(candidates: Sequence[T], accuracy_of: Callable[[T], float], threshold: float
                 ) -> tuple[T | None, list[tuple[T, float]]]:
    """Walk the candidates in order until accuracy falls below ``threshold``.

    Used for pruning (candidates = numbers of pruned neurons, growing) and for AW
    (candidates = Delta values, shrinking).  Returns the last candidate whose accuracy
    stayed at or above the threshold (None if the first already failed) and the
    (candidate, accuracy) pairs measured; nothing after the first failure is measured.
    """
    chosen: T | None = None
    seen: list[tuple[T, float]] = []
    for candidate in candidates:
        accuracy = accuracy_of(candidate)
        seen.append((candidate, accuracy))
        if accuracy < threshold:
            break
        chosen = candidate
    return chosen, seen


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
