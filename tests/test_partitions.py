"""Partitions: K labels really means K labels; every split is disjoint and reproducible."""

import numpy as np
import pytest

from fl_backdoor import partitions
from fl_backdoor.datasets import load_split


@pytest.fixture(scope="module")
def labels(data_dir):
    return load_split("fashion-mnist", data_dir, True).y.numpy()


def assert_disjoint(parts, n):
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)
    assert joined.min() >= 0 and joined.max() < n


@pytest.mark.parametrize("k", [1, 3, 5, 7, 10])
def test_k_labels_gives_exactly_k_labels(labels, k):
    parts = partitions.k_labels(labels, 10, k, seed=3)
    for part in parts:
        assert len(np.unique(labels[part])) == k
    sizes = {len(p) for p in parts}
    assert len(sizes) == 1, "equal-size clients"
    assert_disjoint(parts, len(labels))


def test_k_labels_required_label_and_balance(labels):
    parts = partitions.k_labels(labels, 10, 3, seed=1, required={0: 9, 4: 9})
    assert 9 in labels[parts[0]] and 9 in labels[parts[4]]
    owners = np.zeros(10, dtype=int)
    for part in parts:
        owners[np.unique(labels[part])] += 1
    assert owners.max() <= 3, "30 label slots over 10 labels: at most 3 clients per label"


def test_k_labels_unequal_keeps_all_shares(labels):
    parts = partitions.k_labels(labels, 10, 3, seed=0, equal_size=False)
    assert sum(len(p) for p in parts) == len(labels)


def test_dirichlet_reproducible_and_seed_dependent(labels):
    a = partitions.dirichlet(labels, 20, 0.5, seed=7)
    b = partitions.dirichlet(labels, 20, 0.5, seed=7)
    c = partitions.dirichlet(labels, 20, 0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert_disjoint(a, len(labels))
    assert sum(len(p) for p in a) > 0.99 * len(labels)
    # alpha 0.5 is skewed: the typical client misses some labels or is dominated by a few
    shares = [np.bincount(labels[p], minlength=10) / max(len(p), 1) for p in a]
    assert np.mean([s.max() for s in shares]) > 0.3


def test_iid_and_subset(labels):
    parts = partitions.iid(labels, 7, seed=0)
    assert_disjoint(parts, len(labels))
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    sub = partitions.stratified_subset(labels, 0.1, seed=0)
    counts = np.bincount(labels[sub], minlength=10)
    assert np.all(counts == 600)


def test_a_victim_mode_attacker_without_victim_images_is_a_data_error(data_dir):
    from experiments.dba_cifar import with_victim_attackers
    from fl_backdoor.config import ExperimentConfig, UserError
    from fl_backdoor.federation_data import check_attackers_data, clients_holding
    from server_strategies.simulation import run_simulation

    flat = {"dataset": "mnist", "data-dir": data_dir, "partition": "dirichlet", "num-clients": 100,
            "num-attackers": 4, "data-fraction": 0.1, "seed": 0}
    cfg = ExperimentConfig.from_flat(flat)
    assert 0 not in clients_holding(cfg, 9)  # this split leaves attacker 0 without a single 9
    with pytest.raises(UserError, match="attacker 0 holds no images of victim label 9"):
        check_attackers_data(cfg)
    with pytest.raises(UserError, match="attacker 0 holds no images"):
        run_simulation(cfg)  # reported before anything starts
    check_attackers_data(cfg.replace(attack_rounds="none"))  # nobody poisons: nothing to check
    check_attackers_data(cfg.replace(attack_mode="all-to-one"))
    with_victim_attackers(flat)
    fixed = ExperimentConfig.from_flat(flat)
    assert list(fixed.attackers) == clients_holding(cfg, 9)[:4]
    check_attackers_data(fixed)
