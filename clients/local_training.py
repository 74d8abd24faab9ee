"""One client's local training job, independent of Flower (the ClientApp wraps it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from clients.adversarial import (MODEL_FAULTS, PROCESS_FAULTS, break_process, clip_to_band, clip_to_band_state,
                                 corrupt_state, estimated_mask, oracle_mask)
from fl_backdoor.masks import NeuronMask, install_mask
from fl_backdoor.attacks import attack_gamma, is_attacking, poison_settings, poisoned_training_data, scale_update
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import client_data
from fl_backdoor.models import build_model, resolve_layer
from fl_backdoor.training import SGDSettings, TrainStats, l2_on_layer, pick_device, predict, to_device, train


@dataclass(frozen=True)
class LocalResult:
    """A client's submitted model and what its training did."""

    state: dict[str, torch.Tensor]
    stats: TrainStats
    attacked: bool


def benign_settings(cfg: ExperimentConfig, server_round: int = 1) -> SGDSettings:
    """The optimiser of an honest client in a round."""
    return SGDSettings(lr=cfg.lr * cfg.lr_decay ** (server_round - 1), epochs=cfg.local_epochs, batch_size=cfg.batch_size,
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
    malformed = cfg.malformed_kind(client_id)
    if malformed in PROCESS_FAULTS:
        break_process(malformed, cfg.round_timeout)
    device = pick_device(cfg.device)
    model = client_model(cfg, global_state, mask)
    x, y = client_data(cfg, client_id, device)
    generator = job_generator(cfg, client_id, server_round, phase)
    extra = l2_on_layer(model.last_conv, cfg.last_conv_l2) if cfg.last_conv_l2 > 0 else None
    attacking = is_attacking(cfg, client_id, server_round, phase)
    if attacking:
        after_step = adapt_to_defense(cfg, model, x, mask)
        xp, yp, transform = poisoned_training_data(cfg, client_id, x, y)
        stats = train(model, xp, yp, poison_settings(cfg, server_round), generator, batch_transform=transform, extra_loss=extra,
                      after_step=after_step)
    else:
        stats = train(model, x, y, benign_settings(cfg, server_round), generator, extra_loss=extra)
    local = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    gamma = attack_gamma(cfg, phase)
    if attacking and gamma != 1.0:
        local = scale_update(global_state, local, gamma)
    if attacking and cfg.adaptive_attack == "aw-aware":
        clip_to_band_state(local, model.last_conv, cfg.adaptive_delta)
    if malformed in MODEL_FAULTS:
        local = corrupt_state(malformed, local)
    return LocalResult(local, stats, attacking)


def adapt_to_defense(cfg: ExperimentConfig, model: torch.nn.Module, x: torch.Tensor,
                     mask: NeuronMask | None) -> Callable[[torch.nn.Module], None] | None:
    """Set up the adaptive attacker's training: its pruning mask (Attack 2) or its weight clipping (aw-aware)."""
    if cfg.adaptive_attack in ("pruning-aware", "pruning-aware-oracle"):
        layer = resolve_layer(model, cfg.pruning_layer)
        own = oracle_mask(cfg) if cfg.adaptive_attack == "pruning-aware-oracle" else estimated_mask(model, layer, x, cfg)
        install_mask(model, NeuronMask(layer, own.size, tuple(sorted(set(own.pruned) | set(
            mask.pruned if mask is not None and mask.layer == layer else ())))))
    if cfg.adaptive_attack == "aw-aware":
        return lambda m: clip_to_band(m, m.last_conv, cfg.adaptive_delta)
    return None


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
    if cfg.malformed_kind(client_id) == "bad-accuracy":
        return 3 * int(y.shape[0]), int(y.shape[0])
    return int((predict(model, x, cfg.eval_batch_size) == y).sum()), int(y.shape[0])
