"""Norm-bounded model replacement by projected gradient descent (Wang et al., "Attack of the tails", NeurIPS
2020; Sun et al. 2019's constrain-and-scale).

The attacker trains on its poisoned data and, every ``pgd-every`` optimiser steps,
projects its model onto the L2 ball of radius ``pgd-norm / gamma`` around the global
model it received; the model-replacement boost gamma then brings the submitted update
to at most ``pgd-norm``, and the submitted update is projected onto that ball once more
so the bound holds exactly.  This is the attack norm clipping cannot see: an update no
longer than the bound the defender clips to is left as it is.  The norm covers every
floating-point entry of the state (weights, biases and normalisation statistics).

With ``pgd-norm=0`` (the default) the bound is the norm of the update the attacker would
send if it were honest this round: it first trains a copy of the global model as an
honest client does, on its own clean data.  Honest update norms shrink as training goes
(on Fashion-MNIST, Table II setting: 3.3-4.2 in round 1, 0.43-0.60 in round 60), so a
fixed bound is either clipped late or needlessly small early; the honest norm is what a
median-norm clip (norm clipping's default, FLAME) lets through.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from fl_backdoor.attacks import attack_gamma
from fl_backdoor.federation_data import client_data
from fl_backdoor.masks import NeuronMask
from fl_backdoor.settings import Setting
from fl_backdoor.training import train

from . import BEHAVIOURS, Behaviour, Job, State, TrainingPlan

NORM = Setting("pgd-norm", 0.0, "pgd: L2 bound on the attacker's submitted update; 0 = the norm of its own honest "
                                "update of the round.", "attack", low=0.0, added=True)
EVERY = Setting("pgd-every", 10, "pgd: optimiser steps between projections (Wang et al.'s 10).", "attack", low=1,
                added=True)


def update_norm(state: State, center: State) -> float:
    """L2 norm of state - center over the floating-point entries (in float64)."""
    return sum(float(((state[k].double() - v.double()) ** 2).sum())
               for k, v in center.items() if v.is_floating_point()) ** 0.5


@torch.no_grad()
def project_onto_ball(state: State, center: State, radius: float) -> float:
    """Move the floating-point entries of ``state`` in place into the L2 ball of ``radius`` around ``center``.

    A projected update lands a millionth of the radius inside the sphere, so that rounding
    the entries to their float32 cannot put it outside.  Returns the norm before the projection.
    """
    norm = update_norm(state, center)
    if norm > radius:
        scale = radius * (1 - 1e-6) / norm
        for k, v in center.items():
            if v.is_floating_point():
                state[k].copy_(v + (state[k] - v) * scale)
    return norm


@BEHAVIOURS.register("pgd", settings=(NORM, EVERY), role="adaptive")
class NormBounded(Behaviour):
    """Projects its poisoned training onto the norm ball every pgd-every steps, and its submitted update."""

    def training(self, job: Job, plan: TrainingPlan, model: nn.Module, mask: NeuronMask | None) -> TrainingPlan:
        if not job.attacking:
            return plan
        center = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.bound = NORM.of(self.cfg) or self.honest_norm(job, model, center)
        radius = self.bound / max(attack_gamma(self.cfg, job.phase), 1.0)
        steps = itertools.count(1)
        before = plan.after_step

        def step(m: nn.Module) -> None:
            if before is not None:
                before(m)
            if next(steps) % EVERY.of(self.cfg) == 0:
                project_onto_ball(m.state_dict(), center, radius)

        return plan.but(after_step=step)

    def honest_norm(self, job: Job, model: nn.Module, center: State) -> float:
        """The norm of the update an honest training of this job would give."""
        from clients.local_training import benign_settings, job_generator

        honest = copy.deepcopy(model)
        x, y = client_data(self.cfg, self.client_id, next(model.parameters()).device)
        train(honest, x, y, benign_settings(self.cfg, job.server_round),
              job_generator(self.cfg, self.client_id, job.server_round, job.phase))
        return update_norm(honest.state_dict(), center)

    def submit(self, job: Job, global_state: State, local: State) -> State:
        if job.attacking:  # the training hook of this job set the bound
            project_onto_ball(local, global_state, self.bound)
        return local
