"""Who holds which data: the server's clean set, the clients' partitions, the test set.

All of it derives from the config and its seed, so every process (server, Ray
actors, experiment workers) computes the same split.  Results are cached per
process under a digest of the config keys they depend on: datasets load once and
partitions are computed once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import partitions
from .config import ExperimentConfig, UserError, parse_round_spec
from .datasets import Split, load_split, resolve_data_dir
from .training import to_device

_CACHE: dict[tuple[str, ...], Any] = {}


def depends_on(*roles: str) -> tuple[str, ...]:
    """The keys a cached piece depends on: those declaring one of ``roles`` (the roles of the config keys)."""
    return tuple(k for role in roles for k in ExperimentConfig.keys_with_role(role))


def _cached(key: tuple[str, ...], build: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _train_split(cfg: ExperimentConfig) -> Split:
    return load_split(cfg.dataset, str(resolve_data_dir(cfg.data_dir)), True, cfg.download)


def pools(cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """(server validation indices, indices the clients share) into the training split."""
    def build() -> tuple[np.ndarray, np.ndarray]:
        labels = _train_split(cfg).y.numpy()
        validation = partitions.stratified_subset(labels, cfg.validation_fraction, cfg.seed + 7)
        pool = np.setdiff1d(np.arange(len(labels)), validation)
        if cfg.data_fraction < 1.0:
            pool = pool[partitions.stratified_subset(labels[pool], cfg.data_fraction, cfg.seed + 11)]
        return validation, pool
    return _cached(("pools", cfg.digest(*depends_on("split"))), build)


def client_partitions(cfg: ExperimentConfig) -> tuple[np.ndarray, ...]:
    """Training-split indices of every client."""
    def build() -> tuple[np.ndarray, ...]:
        _, pool = pools(cfg)
        labels = _train_split(cfg).y.numpy()[pool]
        if cfg.partition == "iid":
            parts = partitions.iid(labels, cfg.num_clients, cfg.seed)
        elif cfg.partition == "dirichlet":
            parts = partitions.dirichlet(labels, cfg.num_clients, cfg.dirichlet_alpha, cfg.seed)
        else:
            # an attacker of the victim mode must own victim-label images to poison
            required = ({a: cfg.victim_label for a in cfg.attackers}
                        if cfg.attack_mode == "victim" else None)
            parts = partitions.k_labels(labels, cfg.num_clients, cfg.labels_per_client, cfg.seed,
                                        equal_size=cfg.equal_size, required=required)
        return tuple(pool[p] for p in parts)
    return _cached(("partitions", cfg.digest(*depends_on("split", "partition"))), build)


def clients_holding(cfg: ExperimentConfig, label: int) -> list[int]:
    """The clients whose partition holds at least one image of ``label``."""
    labels, parts = _train_split(cfg).y.numpy(), client_partitions(cfg)
    return [c for c, part in enumerate(parts) if np.any(labels[part] == label)]


def check_attackers_data(cfg: ExperimentConfig) -> None:
    """Victim mode: every attacker that poisons must hold victim-label images (UserError naming those that don't).

    Without them its poisoned set is empty, yet it would still send a boosted update.
    """
    if cfg.attack_mode != "victim" or not cfg.attackers:
        return
    poisoning = [a for a in cfg.attackers if parse_round_spec(cfg.attack_spec(a), "attack-rounds") != []]
    holding = clients_holding(cfg, cfg.victim_label)
    lacking = [a for a in poisoning if a not in holding]
    if lacking:
        holders = [c for c in holding if c not in cfg.attackers]
        raise UserError(f"attacker {lacking[0]} holds no images of victim label {cfg.victim_label} "
                        f"({cfg.partition} partition, seed {cfg.seed}; attackers without any: {lacking}); "
                        f"choose attacker-ids among clients that hold some, e.g. {holders[:8]}")


def client_data(cfg: ExperimentConfig, client_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's (x, y) on the device, cached for the life of the process."""
    def build() -> tuple[torch.Tensor, torch.Tensor]:
        part = _train_split(cfg).subset(client_partitions(cfg)[client_id])
        return to_device(part.x, device), part.y.to(device)
    return _cached(("client", cfg.digest(*depends_on("split", "partition")), str(client_id), str(device)), build)


def validation_set(cfg: ExperimentConfig) -> Split:
    """The server's small clean set, held out of every client's data."""
    return _cached(("validation", cfg.digest(*depends_on("split"))),
                   lambda: _train_split(cfg).subset(pools(cfg)[0]))


def test_set(cfg: ExperimentConfig) -> Split:
    """The (optionally stratified-subsampled) test split."""
    def build() -> Split:
        test = load_split(cfg.dataset, str(resolve_data_dir(cfg.data_dir)), False, cfg.download)
        if cfg.test_subset and cfg.test_subset < len(test):
            keep = partitions.stratified_subset(test.y.numpy(), cfg.test_subset / len(test), cfg.seed + 13)
            test = test.subset(keep)
        return test
    return _cached(("test", cfg.digest(*depends_on("test-set"))), build)
