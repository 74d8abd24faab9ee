"""An attacker against federated trigger inversion (issue 41): it hides its target label and blanks the trigger.

In the ``trigger-norms`` query it reports its target label's reversed mask norm as the
largest of its norms, the least suspicious a label can look; in ``trigger-pattern`` it
sends all-zero masks, a trigger that stamps nothing, so that an average of the clients'
triggers would unlearn less.  Federated trigger inversion takes medians of both
(server_strategies/phases/inversion.py).  Training is the plain attacker's; an attacker
whose trigger evades inversion altogether is the blended trigger (``trigger=blend``).
"""

from __future__ import annotations

from typing import Any

from . import BEHAVIOURS, Behaviour

# the queries' names as server_strategies/phases/inversion.py registers them (a test holds them equal)
TRIGGER_NORMS, TRIGGER_PATTERN = "trigger-norms", "trigger-pattern"


@BEHAVIOURS.register("inversion-aware", role="adaptive")
class InversionAware(Behaviour):
    """Reports its target label's norm as the largest and blank reversed triggers."""

    def reply(self, query: str, metrics: dict[str, Any]) -> dict[str, Any]:
        if query == TRIGGER_NORMS:
            norms = list(metrics["norms"])
            norms[self.cfg.attack_label] = max(norms)
            return {**metrics, "norms": norms}
        if query == TRIGGER_PATTERN:
            return {**metrics, "masks": [0.0] * len(metrics["masks"])}
        return metrics
