"""Post-training cleansing phases, one file each, registered by name; a defense is a list of them.

The config key ``defense`` is a comma-separated list of phases run in order on the
trained global model, or one of the paper's modes, which are aliases::

    train-only = ""    fp = prune    fp-aw = prune,aw    aw = aw    all = prune,aw?,finetune,aw

A phase written ``name?`` is a probe: it runs, its result is recorded, and the
model is restored (the All mode reports FP+AW on the way).  Each step's result is
named after the phases applied so far, with the paper's names where it has them
(prune -> fp, prune+aw -> fp-aw, prune+finetune -> ft, prune+finetune+aw -> all).

A phase is a function of the run's :class:`~server_strategies.cleansing.Cleansing`
context and its result name::

    @PHASES.register("my-phase", settings=(MY_SETTING,), rules=(...,))
    def my_phase(ctx: Cleansing, result: str) -> None:
        ...  # change ctx.run.global_model, then ctx.finish(result, note, **facts)

A phase declares its settings and rules when it registers (fl_backdoor.settings), and
what it asks of the clients in its own module (clients/jobs.py: queries and training
variants); the settings every phase shares are the registry's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_backdoor.errors import ConfigError
from fl_backdoor.registry import Registry, unknown_choice
from fl_backdoor.settings import Setting

if TYPE_CHECKING:
    from server_strategies.cleansing import Cleansing

Phase = Callable[["Cleansing", str], None]
MODES = {"train-only": "", "fp": "prune", "fp-aw": "prune,aw", "aw": "aw", "all": "prune,aw?,finetune,aw"}
PRUNING_LAYER = Setting("pruning-layer", "", "Layer whose neurons are ranked and pruned; empty = the model's last "
                                             "conv layer.", "cleansing", added=False)
PRUNING_ACCURACY = Setting("pruning-accuracy", "server", "Accuracy for the pruning stop: server validation set or "
                                                         "client reports.", "cleansing",
                           choices=("server", "clients"), added=False)
CLEAN_BUDGET = Setting("clean-budget", 0.05, "The clean accuracy a defense may spend: a phase that prunes, masks or "
                                             "unlearns takes the strongest amount whose validation accuracy stays "
                                             "within this of its input's, and a defense whose final model falls "
                                             "further below the trained model's hands back the trained model "
                                             "(docs/defenses/budget.md).", "cleansing", low=0.0, high=1.0)
CURVE_POINTS = Setting("curve-points", 16, "Points of the pruning (Fig. 5) and Delta (Fig. 6) curves; 0 = no curves.",
                       "cleansing", low=0, added=False)
PHASES: Registry[Phase] = Registry(
    "phase", __name__, settings=(PRUNING_LAYER, PRUNING_ACCURACY, CLEAN_BUDGET, CURVE_POINTS),
    choices={"defense": lambda r: tuple(dict.fromkeys((*MODES, *r.names())))},
    picks=lambda cfg: tuple(dict.fromkeys(step.phase for step in defense_steps(cfg.defense))))
PAPER_RESULTS = {("prune",): "fp", ("prune", "aw"): "fp-aw", ("prune", "finetune"): "ft",
                 ("prune", "finetune", "aw"): "all", ("aw",): "aw"}


@dataclass(frozen=True)
class Step:
    """One entry of a defense: a phase, whether it is a probe, and the name of its result."""

    phase: str
    probe: bool
    result: str

    @property
    def token(self) -> str:
        """The step as written in the defense list (its key in the run's progress and timings)."""
        return self.phase + ("?" if self.probe else "")


def defense_steps(defense: str) -> tuple[Step, ...]:
    """The steps of a defense mode or phase list; ConfigError for an empty or unknown phase, a misplaced '?' or
    a repeated result."""
    text = MODES.get(defense, defense)
    steps: list[Step] = []
    applied: tuple[str, ...] = ()
    tokens = [t.strip() for t in text.split(",")] if text.strip() else []
    for token in tokens:
        if not token:
            raise ConfigError(f"defense: '{defense}' has an empty phase (a comma too many)")
        phase, probe = token.removesuffix("?"), token.endswith("?")
        if "?" in phase:
            raise ConfigError(f"defense: '{token}' is not a phase, nor a probe written 'phase?'")
        if phase not in PHASES:
            raise ConfigError(unknown_choice("defense", phase, tuple(dict.fromkeys((*MODES, *PHASES.names())))))
        path = (*applied, phase)
        result = PAPER_RESULTS.get(path, "+".join(path))
        if any(s.result == result for s in steps):
            raise ConfigError(f"defense: '{defense}' computes the result '{result}' twice")
        steps.append(Step(phase, probe, result))
        if not probe:
            applied = path
    return tuple(steps)
