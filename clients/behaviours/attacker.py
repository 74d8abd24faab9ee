"""The backdoor attacker: poisoned training in its attack rounds and model replacement."""

from __future__ import annotations

from torch import nn

from fl_backdoor.attacks import attack_gamma, is_attacking, poison_settings, poisoned_training_data, scale_update
from fl_backdoor.masks import NeuronMask

from . import BEHAVIOURS, Behaviour, Job, State, TrainingPlan


@BEHAVIOURS.register("attacker", role="base")
class Attacker(Behaviour):
    """Trains on poisoned data with its own optimiser and submits G + gamma * (L - G)."""

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
            return scale_update(global_state, local, gamma)
        return local
