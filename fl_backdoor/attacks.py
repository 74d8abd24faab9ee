"""The backdoor attacker: who attacks when, with which trigger, and model replacement."""

from __future__ import annotations

import torch

from .config import ExperimentConfig, parse_int_list, parse_round_spec
from .models import is_batch_norm_statistic
from .poisoning import BatchPoisoner, victim_copies
from .training import BatchTransform, SGDSettings
from .triggers import Trigger, trigger_for, trigger_pieces


def image_size(cfg: ExperimentConfig) -> int:
    """Height (= width) of the dataset's images."""
    return 32 if cfg.dataset == "cifar10" else 28


def attacker_trigger(cfg: ExperimentConfig, client_id: int) -> Trigger:
    """The trigger an attacker stamps: its DBA piece, or the whole pattern."""
    piece = cfg.dba_piece_of(client_id) if trigger_pieces(cfg.trigger) else None
    return test_trigger(cfg, piece)


def test_trigger(cfg: ExperimentConfig, piece: int | None = None) -> Trigger:
    """The trigger used at test time (a distributed one: the whole pattern, or one piece)."""
    return trigger_for(cfg.trigger, image_size(cfg), parse_int_list(cfg.trigger_origin, "trigger-origin"), piece,
                       cfg.to_flat())


def is_attacking(cfg: ExperimentConfig, client_id: int, server_round: int, phase: str) -> bool:
    """Whether this client poisons in this round.

    Attackers poison in their attack rounds during training and in every round of
    federated fine-tuning, where the paper says they "participate", unless
    finetune-attack is benign.
    """
    if client_id not in cfg.attackers:
        return False
    if phase == "finetune":
        return cfg.finetune_attack != "benign"
    return cfg.attacks_in_round(client_id, server_round)


def simultaneous_attackers(cfg: ExperimentConfig) -> int:
    """The most attackers that poison in one training round under ``attack-rounds``."""
    ranges = [parse_round_spec(cfg.attack_spec(a), "attack-rounds") for a in cfg.attackers]
    every_round = sum(1 for r in ranges if r is None)
    starts = {a for r in ranges if r for a, _ in r}  # the overlap is largest where some range starts
    overlaps = [sum(1 for r in ranges if r and any(a <= s <= b for a, b in r)) for s in starts]
    return every_round + max(overlaps, default=0)


def attack_gamma(cfg: ExperimentConfig, phase: str) -> float:
    """The model-replacement scale of a poisoning attacker in a phase.

    In training it is gamma.  In federated fine-tuning every attacker takes part in every
    round (the paper: attackers "participate"), so that together they never replace more
    of the model in one round than in their busiest training round: with 'replace', each
    gets gamma * (most attackers of one training round) / (all attackers), never below 1
    (no boost).  Four single-shot DBA attackers with gamma 100 thus share one replacement
    (25 each).  'poison' and 'benign' use no boost.
    """
    if phase != "finetune":
        return cfg.gamma
    if cfg.finetune_attack != "replace" or not cfg.attackers:
        return 1.0
    return max(1.0, cfg.gamma * simultaneous_attackers(cfg) / len(cfg.attackers))


def poison_settings(cfg: ExperimentConfig, server_round: int = 1) -> SGDSettings:
    """The attacker's own optimiser in a round: lr, epochs and the DBA step schedule (x0.1 at 20% and 80%)."""
    epochs = cfg.poison_epochs
    milestones = (tuple(sorted({max(1, int(0.2 * epochs)), max(1, int(0.8 * epochs))}))
                  if cfg.poison_lr_steps else ())
    return SGDSettings(lr=cfg.poison_lr * cfg.lr_decay ** (server_round - 1), epochs=epochs,
                       batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       lr_milestones=milestones)


def poisoned_training_data(cfg: ExperimentConfig, client_id: int, x: torch.Tensor, y: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, BatchTransform | None]:
    """What the attacker trains on: (x, y, batch transform) for the configured mode."""
    trigger = attacker_trigger(cfg, client_id)
    if cfg.attack_mode == "victim":
        xp, yp = victim_copies(x, y, cfg.victim_label, cfg.attack_label, trigger)
        return xp, yp, None
    return x, y, BatchPoisoner(trigger, cfg.attack_label, cfg.poison_per_batch)


def scale_update(global_state: dict[str, torch.Tensor], local_state: dict[str, torch.Tensor],
                 gamma: float, statistics: str = "scaled") -> dict[str, torch.Tensor]:
    """Model replacement: G + gamma * (L - G) for every entry, BN buffers included.

    ``statistics='own'`` sends the batch norms' running statistics as trained (L) instead."""
    out = {}
    for name, g in global_state.items():
        l = local_state[name]
        if statistics == "own" and is_batch_norm_statistic(name):
            out[name] = l
            continue
        scaled = g.double() + gamma * (l.double() - g.double())
        out[name] = scaled.round().to(g.dtype) if not g.is_floating_point() else scaled.to(g.dtype)
    return out
