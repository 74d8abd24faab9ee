"""One client's local training job, independent of Flower (the ClientApp wraps it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from defenses.masks import NeuronMask, install_mask
from fl_backdoor.attacks import is_attacking, poison_settings, poisoned_training_data, scale_update
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.models import build_model
from fl_backdoor.training import SGDSettings, TrainStats, l2_on_layer, pick_device, predict, train


@dataclass(frozen=True)
class LocalResult:
    """A client's submitted model and what its training did."""

    state: dict[str, torch.Tensor]
    stats: TrainStats
    attacked: bool


def benign_settings(cfg: ExperimentConfig) -> SGDSettings:
    """The optimiser of an honest client."""
    return SGDSettings(lr=cfg.lr, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                       momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def job_generator(cfg: ExperimentConfig, client_id: int, server_round: int, phase: str) -> torch.Generator:
    """Shuffling RNG of one job: a function of seed, client, round and phase only."""
    phase_code = {"train": 0, "finetune": 1}.get(phase, 2)
    seed = np.random.SeedSequence([cfg.seed, client_id, server_round, phase_code]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(seed))


def run_local_job(cfg: ExperimentConfig, client_id: int, global_state: dict[str, torch.Tensor],
                  server_round: int, phase: str = "train", mask: NeuronMask | None = None) -> LocalResult:
    """Train the global model on this client's data, honestly or as the attacker.

    The attacker trains on poisoned data with its own optimiser and submits the
    model-replacement update G + gamma * (L - G).
    """
    device = pick_device(cfg.device)
    model = client_model(cfg, global_state, mask)
    x, y = client_data(cfg, client_id, device)
    generator = job_generator(cfg, client_id, server_round, phase)
    extra = l2_on_layer(model.last_conv, cfg.last_conv_l2) if cfg.last_conv_l2 > 0 else None
    attacking = is_attacking(cfg, client_id, server_round, phase)
    if attacking:
        xp, yp, transform = poisoned_training_data(cfg, client_id, x, y)
        stats = train(model, xp, yp, poison_settings(cfg), generator, batch_transform=transform, extra_loss=extra)
    else:
        stats = train(model, x, y, benign_settings(cfg), generator, extra_loss=extra)
    local = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if attacking and cfg.gamma != 1.0:
        local = scale_update(global_state, local, cfg.gamma)
    return LocalResult(local, stats, attacking)


def client_model(cfg: ExperimentConfig, state: dict[str, torch.Tensor], mask: NeuronMask | None) -> torch.nn.Module:
    """The received global model on this process's device, with its pruning mask."""
    model = build_model(cfg).to(pick_device(cfg.device))
    model.load_state_dict(state)
    return install_mask(model, mask)


def local_accuracy(cfg: ExperimentConfig, client_id: int, state: dict[str, torch.Tensor],
                   mask: NeuronMask | None) -> tuple[int, int]:
    """(correct, total) of the model on the client's clean local data."""
    model = client_model(cfg, state, mask)
    x, y = client_data(cfg, client_id, pick_device(cfg.device))
    return int((predict(model, x, cfg.eval_batch_size) == y).sum()), int(y.shape[0])
