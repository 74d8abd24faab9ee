"""Split a training set among clients: IID, K labels per client (the paper), Dirichlet (DBA).

Every function is a pure function of the labels and a seed, so each process that
computes a partition gets the same one.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def iid(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle and deal the samples into equal shares."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def assign_labels(num_clients: int, k: int, num_classes: int, seed: int,
                  required: dict[int, int] | None = None) -> list[list[int]]:
    """Give each client k distinct random labels, spreading labels as evenly as possible.

    ``required`` maps a client to a label it must hold (an attacker must own the
    victim label).  Each label is held by at most ceil(num_clients * k / num_classes)
    clients, so no label is split among many more clients than another, unless more
    clients are required to hold it (many attackers sharing one victim label).
    """
    rng = np.random.default_rng(seed)
    required = required or {}
    cap = max([-(-num_clients * k // num_classes), *Counter(required.values()).values()])
    for _ in range(1000):
        load = np.zeros(num_classes, dtype=int)
        chosen: list[list[int]] = []
        ok = True
        for client in range(num_clients):
            own = [required[client]] if client in required else []
            load[own] += 1
            free = [c for c in range(num_classes) if c not in own and load[c] < cap]
            if len(free) < k - len(own):
                ok = False
                break
            # least-used labels first, random among equals
            free = sorted(free, key=lambda c: (load[c], rng.random()))
            picks = own + free[: k - len(own)]
            load[picks[len(own):]] += 1
            chosen.append(sorted(picks))
        if ok and (load <= cap).all():
            return chosen
    raise ValueError(f"cannot give {num_clients} clients {k} labels each with the required labels {required}")


def k_labels(labels: np.ndarray, num_clients: int, k: int, seed: int, *,
             equal_size: bool = True, required: dict[int, int] | None = None,
             num_classes: int = 10) -> list[np.ndarray]:
    """The paper's split: each client holds data of k randomly chosen labels.

    The samples of a label are shuffled and split evenly among the clients holding
    it.  With ``equal_size`` every client is cut to the size of the smallest share.
    """
    rng = np.random.default_rng(seed + 1)
    owners: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    assignment = assign_labels(num_clients, k, num_classes, seed, required)
    for client, picks in enumerate(assignment):
        for label in picks:
            owners[label].append(client)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label, clients in owners.items():
        if not clients:
            continue
        idx = rng.permutation(np.flatnonzero(labels == label))
        for client, part in zip(clients, np.array_split(idx, len(clients)), strict=True):
            shares[client].append(part)
    parts = [np.concatenate(s) if s else np.zeros(0, dtype=np.int64) for s in shares]
    if equal_size:
        per_label = min(len(p) for s in shares for p in s)
        parts = [np.concatenate([p[:per_label] for p in s]) for s in shares]
    return [np.sort(p) for p in parts]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int,
              num_classes: int = 10) -> list[np.ndarray]:
    """DBA's split: for every class, client shares drawn from Dirichlet(alpha).

    Each class's shuffled samples are cut into num_clients pieces whose sizes follow
    one Dirichlet draw (rounded), as in the DBA reference sampler.
    """
    rng = np.random.default_rng(seed)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        counts = np.floor(proportions * len(idx)).astype(int)
        cuts = np.cumsum(counts)[:-1]
        for client, part in enumerate(np.split(idx, cuts)):
            shares[client].append(part)
    return [np.sort(np.concatenate(s)) for s in shares]


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a random subset keeping every class's share (at least one per class)."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        n = max(1, round(len(idx) * fraction))
        keep.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(keep))
