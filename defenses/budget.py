"""The clean-accuracy budget: no defense hands back a model whose clean accuracy fell by more than it.

A defense that prunes, masks or unlearns chooses how much on clean data: it tries its
candidates from the strongest (the method's own setting) to the weakest, and keeps the
first whose clean accuracy stays within the budget of the model it started from; the
unchanged model is always the last candidate.  Only clean accuracy is read, never the
attack set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """The clean accuracy a defense started from and how much of it the defense may spend."""

    baseline: float
    budget: float

    @property
    def floor(self) -> float:
        """The lowest clean accuracy a handed-back model may have."""
        return self.baseline - self.budget

    def allows(self, accuracy: float) -> bool:
        """Whether a model of this clean accuracy may be handed back."""
        return bool(accuracy >= self.floor - 1e-9)

    def record(self, accuracy: float, **more: Any) -> dict[str, Any]:
        """What results.json says about the budget: the accuracies compared and the verdict."""
        return {"clean_input": self.baseline, "clean_output": accuracy, "budget": self.budget,
                "within": self.allows(accuracy), **more}


def strongest_within(candidates: Sequence[T], accuracy_of: Callable[[T], float], budget: Budget
                     ) -> tuple[T | None, list[tuple[T, float]]]:
    """The first candidate, strongest first, whose clean accuracy the budget allows (None: none does, the model
    stays as it was), and the (candidate, accuracy) pairs measured; nothing after the chosen one is measured."""
    seen: list[tuple[T, float]] = []
    for candidate in candidates:
        accuracy = accuracy_of(candidate)
        seen.append((candidate, accuracy))
        if budget.allows(accuracy):
            return candidate, seen
    return None, seen
