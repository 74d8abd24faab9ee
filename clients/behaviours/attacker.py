"""The backdoor attacker: poisoned training in its attack rounds and model replacement."""

from __future__ import annotations

from torch import nn

from fl_backdoor.attacks import attack_gamma, is_attacking, poison_settings, poisoned_training_data, scale_update
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.masks import NeuronMask
from fl_backdoor.models import has_batch_norm
from fl_backdoor.settings import Rule, Setting

from . import BEHAVIOURS, Behaviour, Job, State, TrainingPlan

# the hooks through which a behaviour acts outside its poisoned training jobs
REPORT_HOOKS = ("activations", "neuron_report", "local_accuracy", "candidate_accuracies", "reply")


def reports_too(name: str) -> bool:
    """Whether a behaviour overrides a hook of the cleansing queries (it acts beyond poisoned training)."""
    behaviour = BEHAVIOURS[name]
    return any(getattr(behaviour, hook) is not getattr(Behaviour, hook) for hook in REPORT_HOOKS)


def byzantine_overrides(cfg: ExperimentConfig, acting_in_reports: bool) -> str | None:
    """Under a Byzantine attack the attackers train honestly, so an adaptive attack acts in no training job."""
    if cfg.byzantine_attack == "none" or cfg.adaptive_attack == "none":
        return None
    if reports_too(cfg.adaptive_attack) != acting_in_reports:
        return None
    where = ("acts only in the cleansing queries" if acting_in_reports else "never acts; choose one of the two")
    return (f"'{cfg.adaptive_attack}' with byzantine-attack '{cfg.byzantine_attack}': the attackers train honestly "
            f"and the server submits the Byzantine update in their place, so the adaptive attack {where}")


STATISTICS = Setting(
    "replacement-statistics", "scaled", "What model replacement sends for the batch norms' running statistics: "
    "'scaled' like every other entry (G + gamma (L - G), as Bagdasaryan et al.'s and BackFed's code do; the server "
    "refuses the reply where a variance goes negative), or 'own', the attacker's as trained (always valid).",
    "attack", choices=("scaled", "own"))


def statistics_act(cfg: ExperimentConfig) -> str | None:
    """'own' changes nothing on a model without batch norm."""
    if STATISTICS.of(cfg) == "scaled" or has_batch_norm(cfg):
        return None
    return f"'own' with model '{cfg.model_name}', which has no batch norm: it changes nothing"


@BEHAVIOURS.register("attacker", role="base", settings=(STATISTICS,), rules=(
    Rule("replacement-statistics", "'own' needs a model with batch norm", statistics_act, warning=True),
    Rule("adaptive-attack", "an adaptive attack that acts only in poisoned training is not combined with "
                            "byzantine-attack", lambda cfg: byzantine_overrides(cfg, acting_in_reports=False)),
    Rule("adaptive-attack", "an adaptive attack combined with byzantine-attack acts only in the cleansing queries",
         lambda cfg: byzantine_overrides(cfg, acting_in_reports=True), warning=True)))
class Attacker(Behaviour):
    """Trains on poisoned data with its own optimiser and submits G + gamma * (L - G)
    (``replacement-statistics``: the batch norms' running statistics scaled too, or its own)."""

    def poisons(self, server_round: int, phase: str) -> bool:
        # a Byzantine attacker trains honestly: the server plays the colluders (server_strategies/byzantine)
        return self.cfg.byzantine_attack == "none" and is_attacking(self.cfg, self.client_id, server_round, phase)

    def training(self, job: Job, plan: TrainingPlan, model: nn.Module, mask: NeuronMask | None) -> TrainingPlan:
        if not job.attacking:
            return plan
        x, y, transform = poisoned_training_data(self.cfg, self.client_id, plan.x, plan.y)
        return plan.but(x=x, y=y, transform=transform, settings=poison_settings(self.cfg, job.server_round))

    def submit(self, job: Job, global_state: State, local: State) -> State:
        gamma = attack_gamma(self.cfg, job.phase)
        if job.attacking and gamma != 1.0:
            return scale_update(global_state, local, gamma, STATISTICS.of(self.cfg))
        return local
