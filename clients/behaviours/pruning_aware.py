"""Attack 2 of Sec. VI-B: the attacker trains with the final pruning mask installed.

So the backdoor lives in neurons benign data also uses.  ``pruning-aware`` estimates
the mask (its own p*P most dormant neurons on clean data); ``pruning-aware-oracle``
is given the real final mask (``oracle-checkpoint``).
"""

from __future__ import annotations

import torch
from torch import nn

from defenses.neuron_ranking import local_votes, mean_activations
from fl_backdoor.federation_data import client_data
from fl_backdoor.masks import NeuronMask, install_mask
from fl_backdoor.models import resolve_layer
from fl_backdoor.run_dir import load_checkpoint
from fl_backdoor.settings import Rule, Setting

from . import BEHAVIOURS, Behaviour, Job, TrainingPlan

ORACLE = Setting("oracle-checkpoint", "", "pruning-aware-oracle: checkpoint whose pruning mask the attacker is given.",
                 "attack", added=False)


def estimated_mask(model: nn.Module, layer: str, x: torch.Tensor, rate: float, batch_size: int) -> NeuronMask:
    """The attacker's guess of the final mask: its own p*P most dormant neurons."""
    votes = local_votes(mean_activations(model, layer, x, batch_size), rate)
    return NeuronMask(layer, len(votes), tuple(i for i, v in enumerate(votes) if v))


@BEHAVIOURS.register("pruning-aware", role="adaptive")
class PruningAware(Behaviour):
    """Trains its attack with its estimate of the final mask installed (on top of the current one)."""

    def own_mask(self, model: nn.Module, layer: str) -> NeuronMask:
        """The mask the attacker expects the defense to end with."""
        x, _ = client_data(self.cfg, self.client_id, next(model.parameters()).device)
        return estimated_mask(model, layer, x, float(self.cfg.value("mvp-rate")), self.cfg.eval_batch_size)

    def training(self, job: Job, plan: TrainingPlan, model: nn.Module, mask: NeuronMask | None) -> TrainingPlan:
        if job.attacking:
            layer = resolve_layer(model, str(self.cfg.value("pruning-layer")))
            own = self.own_mask(model, layer)
            current = mask.pruned if mask is not None and mask.layer == layer else ()
            install_mask(model, NeuronMask(layer, own.size, tuple(sorted(set(own.pruned) | set(current)))))
        return plan


@BEHAVIOURS.register("pruning-aware-oracle", settings=(ORACLE,), role="adaptive",
                     rules=(Rule("oracle-checkpoint", "set when adaptive-attack = pruning-aware-oracle",
                                 lambda cfg: None if ORACLE.of(cfg) else
                                 "pruning-aware-oracle needs the checkpoint holding the final mask"),))
class PruningAwareOracle(PruningAware):
    """Given the real final mask, saved in oracle-checkpoint."""

    def own_mask(self, model: nn.Module, layer: str) -> NeuronMask:
        path = ORACLE.of(self.cfg)
        mask = load_checkpoint(path).get("mask")
        if not mask:
            raise ValueError(f"oracle-checkpoint {path} holds no pruning mask")
        return NeuronMask.from_dict(mask)
