"""Attackers who send invalid replies (config ``malformed-reply``), to exercise the server's reply checks.

Process faults break the training job (raise, hang past the server's timeout, kill
the worker); model faults break the submitted model; report faults break a neuron
report, an accuracy report or RNP masks.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from defenses.neuron_ranking import votes_to_prune
from fl_backdoor.models import RUNNING_VARIANCE, has_batch_norm
from fl_backdoor.settings import Rule

from . import BEHAVIOURS, Behaviour, Job, State


@BEHAVIOURS.register("raise", role="malformed")
class Raise(Behaviour):
    """The training job raises."""

    def start(self, job: Job) -> None:
        raise RuntimeError("malformed-reply=raise: the attacker's client failed on purpose")


@BEHAVIOURS.register("hang", role="malformed", rules=(
    Rule("round-timeout", "finite when an attacker hangs", lambda cfg: None if math.isfinite(cfg.round_timeout) else
         "inf with malformed-reply 'hang': the server would wait for the hanging client forever"),))
class Hang(Behaviour):
    """The training job sleeps past the server's round timeout."""

    def start(self, job: Job) -> None:
        time.sleep(self.cfg.round_timeout + 30.0)


@BEHAVIOURS.register("crash", role="malformed")
class Crash(Behaviour):
    """The training job kills its worker process."""

    def start(self, job: Job) -> None:
        os._exit(17)


class BrokenModel(Behaviour):
    """Submits its model with the first entry broken (``break_entry``), or the first one ``breaks``."""

    def breaks(self, name: str) -> bool:
        """Whether ``break_entry`` applies to entry ``name``."""
        return True

    def submit(self, job: Job, global_state: State, local: State) -> State:
        name = next(n for n in local if self.breaks(n))
        broken = dict(local)
        self.break_entry(broken, name)
        return broken

    def break_entry(self, state: State, name: str) -> None:
        """Break ``state[name]`` in place."""
        raise NotImplementedError


@BEHAVIOURS.register("wrong-names", role="malformed")
class WrongNames(BrokenModel):
    """An array under a name the model does not have."""

    def break_entry(self, state: State, name: str) -> None:
        state[name + "_renamed"] = state.pop(name)


@BEHAVIOURS.register("wrong-shape", role="malformed")
class WrongShape(BrokenModel):
    """An array one row short."""

    def break_entry(self, state: State, name: str) -> None:
        state[name] = state[name][:-1]


@BEHAVIOURS.register("wrong-dtype", role="malformed")
class WrongDtype(BrokenModel):
    """An array in float64."""

    def break_entry(self, state: State, name: str) -> None:
        state[name] = state[name].double()


@BEHAVIOURS.register("non-finite", role="malformed")
class NonFinite(BrokenModel):
    """An array holding NaN and Inf."""

    def break_entry(self, state: State, name: str) -> None:
        bad = state[name].clone()
        bad.view(-1)[0] = float("nan")
        bad.view(-1)[-1] = float("inf")
        state[name] = bad


@BEHAVIOURS.register("negative-variance", role="malformed", rules=(
    Rule("malformed-reply", "negative-variance needs a model with batch norm", lambda cfg: None if has_batch_norm(cfg)
         else f"'negative-variance' with model '{cfg.model_name}', which has no batch norm to break"),))
class NegativeVariance(BrokenModel):
    """A batch-norm running variance below 0 (what model replacement sends when an attacker's
    variance is below (1 - 1/gamma) of the global model's)."""

    def breaks(self, name: str) -> bool:
        return name.endswith(RUNNING_VARIANCE)

    def break_entry(self, state: State, name: str) -> None:
        bad = state[name].clone()
        bad.view(-1)[0] = -1e-3
        state[name] = bad


@BEHAVIOURS.register("bad-ranking", role="malformed")
class BadRanking(Behaviour):
    """A RAP ranking with a repeated rank."""

    def neuron_report(self, method: str, report: list[int], rate: float) -> list[int]:
        return [2 if report[0] == 1 else 1] + report[1:] if method == "rap" else report


@BEHAVIOURS.register("bad-votes", role="malformed")
class BadVotes(Behaviour):
    """MVP votes with one vote to prune too many."""

    def neuron_report(self, method: str, report: list[int], rate: float) -> list[int]:
        if method != "mvp":
            return report
        ones = min(len(report), votes_to_prune(rate, len(report)) + 1)
        return [1] * ones + [0] * (len(report) - ones)


@BEHAVIOURS.register("bad-accuracy", role="malformed")
class BadAccuracy(Behaviour):
    """Accuracies above 1."""

    def local_accuracy(self, correct: int, total: int) -> tuple[int, int]:
        return 3 * total, total

    def candidate_accuracies(self, accuracies: list[float]) -> list[float]:
        return [1.5] * len(accuracies)


@BEHAVIOURS.register("bad-masks", role="malformed")
class BadMasks(Behaviour):
    """Channel masks outside [0, 1] in every reply that carries masks (federated RNP's)."""

    def reply(self, query: str, metrics: dict[str, Any]) -> dict[str, Any]:
        if "masks" not in metrics:
            return metrics
        return {**metrics, "masks": [-1.0] * len(metrics["masks"])}
