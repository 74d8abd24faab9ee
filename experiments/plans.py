"""A target's plan: its experiments, the runner, the report, and the experiments that follow from its results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from experiments.reports import Report
from fl_backdoor.sweeps import Experiment, Runner, SweepOutcome
from server_strategies.simulation import run_simulation


@dataclass(frozen=True)
class FollowUp:
    """Experiments that need the first sweep's results (a trained model, a final mask).

    ``build`` makes them from the first sweep's outcome (only those whose inputs exist);
    they run as a second sweep into the same results directory, with their own runner.
    """

    build: Callable[[SweepOutcome], list[Experiment]]
    runner: Runner = run_simulation


@dataclass
class Plan:
    """A target: its experiments, the runner that runs them, what it writes from their results, and the
    experiments that follow from their results, if any."""

    experiments: list[Experiment]
    report: Report
    then: FollowUp | None = None
    runner: Runner = run_simulation


def once_trained(runs: Sequence[Experiment]) -> Callable[[SweepOutcome], list[Experiment]]:
    """A FollowUp's build: those of ``runs`` whose parent (the trained model) has finished."""
    def ready(outcome: SweepOutcome) -> list[Experiment]:
        return [r for r in runs if r.parent is not None and outcome.run_dir(r.parent) is not None]
    return ready
