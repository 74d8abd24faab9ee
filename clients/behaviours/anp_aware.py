"""An attacker against federated ANP (issue 41): every neuron reported as one to keep, every pruning as ruinous.

In the ``anp-masks`` query it sends mask 1.0 for every neuron, the opposite extreme of the
low masks honest clients find on the backdoor's neurons: under a mean, a few such replies
would lift those masks above the pruning threshold.  In every candidate-accuracy query it
reports accuracy 1.0 for the last candidate (federated ANP's unchanged model) and 0.0 for
the others: under an average of accuracies, a few such replies would put every pruning
level outside the clean-accuracy budget.  Federated ANP combines both by medians
(server_strategies/phases/anp.py), which a minority of such clients moves by at most one
honest client's rank.  Training is the plain attacker's.
"""

from __future__ import annotations

from typing import Any

from . import BEHAVIOURS, Behaviour

# the queries' names as server_strategies/phases/anp.py and candidates.py register them (a test holds them equal)
ANP_MASKS, CANDIDATE_ACCURACY = "anp-masks", "candidate-accuracy"


@BEHAVIOURS.register("anp-aware", role="adaptive")
class ANPAware(Behaviour):
    """Reports masks of 1.0 to federated ANP and a ruinous drop for every pruning candidate."""

    def reply(self, query: str, metrics: dict[str, Any]) -> dict[str, Any]:
        if query == ANP_MASKS:
            return {**metrics, "masks": [1.0] * len(metrics["masks"])}
        if query == CANDIDATE_ACCURACY:
            count = len(metrics["accuracies"])
            return {**metrics, "accuracies": [0.0] * (count - 1) + [1.0]}
        return metrics
