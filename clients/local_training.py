"""One client's jobs on its local data, independent of Flower (the ClientApp wraps them).

The honest computation lives here; what an attacker does differently is in its
behaviours (clients/behaviours), called through their hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clients.behaviours import TrainingPlan, conduct_of
from clients.jobs import TRAINING, TrainingVariant
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.masks import NeuronMask, install_mask
from fl_backdoor.models import build_model
from fl_backdoor.training import SGDSettings, TrainStats, l2_on_layer, pick_device, predict, to_device, train


@dataclass(frozen=True)
class LocalResult:
    """A client's submitted model and what its training did."""

    state: dict[str, torch.Tensor]
    stats: TrainStats
    attacked: bool


def benign_settings(cfg: ExperimentConfig, server_round: int = 1) -> SGDSettings:
    """The optimiser of an honest client in a round."""
    return SGDSettings(lr=cfg.lr * cfg.lr_decay ** (server_round - 1), epochs=cfg.local_epochs,
                       batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def job_generator(cfg: ExperimentConfig, client_id: int, server_round: int, phase: str) -> torch.Generator:
    """Shuffling RNG of one job: a function of seed, client, round and phase only."""
    phase_code = {"train": 0, "finetune": 1}.get(phase, 2)
    seed = np.random.SeedSequence([cfg.seed, client_id, server_round, phase_code]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(seed))


def run_local_job(cfg: ExperimentConfig, client_id: int, global_state: dict[str, torch.Tensor],
                  server_round: int, phase: str = "train", mask: NeuronMask | None = None,
                  memory: dict[str, torch.Tensor] | None = None, training: str = "",
                  entries: Mapping[str, Any] | None = None) -> LocalResult:
    """Train the global model on this client's data; the client's behaviours shape data, training and reply.

    ``memory`` is the client's store across jobs, changed in place by behaviours that keep one;
    ``training`` names a phase's training variant (clients/jobs.py; empty = plain SGD), which reads the train
    message's ``entries``.
    """
    conduct = conduct_of(cfg, client_id)
    job = conduct.job(cfg, client_id, server_round, phase, memory)
    conduct.start(job)
    device = pick_device(cfg.device)
    model = client_model(cfg, global_state, mask)
    x, y = client_data(cfg, client_id, device)
    generator = job_generator(cfg, client_id, server_round, phase)
    variant = TRAINING[training](entries) if training else TrainingVariant()
    own = None if job.attacking else variant.honest_training(cfg, model, x, y, generator)
    if own is not None:
        stats = own
    else:
        plan = conduct.training(job, TrainingPlan(x, y, variant.settings(cfg, benign_settings(cfg, server_round)),
                                                  transform=variant.transform(cfg, x)), model, mask)
        extra = l2_on_layer(str(model.last_conv), cfg.last_conv_l2) if cfg.last_conv_l2 > 0 else None
        stats = train(model, plan.x, plan.y, plan.settings, generator, batch_transform=plan.transform,
                      extra_loss=extra, after_step=plan.after_step)
    local = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return LocalResult(conduct.submit(job, global_state, local), stats, job.attacking)


def client_model(cfg: ExperimentConfig, state: dict[str, torch.Tensor], mask: NeuronMask | None) -> torch.nn.Module:
    """The received global model on this process's device, with its pruning mask."""
    model = to_device(build_model(cfg), pick_device(cfg.device))
    model.load_state_dict(state)
    return install_mask(model, mask)


def local_accuracy(cfg: ExperimentConfig, client_id: int, state: dict[str, torch.Tensor],
                   mask: NeuronMask | None) -> tuple[int, int]:
    """(correct, total) of the model on the client's clean local data."""
    model = client_model(cfg, state, mask)
    x, y = client_data(cfg, client_id, pick_device(cfg.device))
    correct = int((predict(model, x, cfg.eval_batch_size) == y).sum())
    return conduct_of(cfg, client_id).local_accuracy(correct, int(y.shape[0]))
