"""A sweep on a two-node Ray cluster (both nodes on this machine): its experiments run on both nodes."""

from __future__ import annotations

import json

import pytest

from fl_backdoor.sweeps import Experiment, run_sweep
from server_strategies.simulation import run_simulation

pytestmark = pytest.mark.slow  # the slow tier: pytest -m slow


TINY = {"dataset": "mnist", "num-clients": 2, "labels-per-client": 10, "data-fraction": 0.01, "test-subset": 200,
        "lr": 0.05, "num-rounds": 1, "curve-points": 0, "defense": "train-only"}


@pytest.fixture
def two_nodes(monkeypatch):
    """A head and a worker node, 2 logical CPUs each; the sweep joins them through RAY_ADDRESS."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_a_sweep_runs_its_experiments_on_both_nodes(two_nodes, data_dir, tmp_path):
    import ray

    experiments = [Experiment(f"node-test-{seed}", {**TINY, "seed": seed, "data-dir": data_dir}) for seed in (1, 2)]
    outcome = run_sweep(experiments, run_simulation, tmp_path, parallel=2, progress=False)
    assert not outcome.failed, outcome.failed
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(alive) == 2
    assert set(outcome.nodes.values()) == alive, "one experiment on each node"
    for exp in experiments:
        results = json.loads((outcome.finished[exp.name] / "results.json").read_text())
        assert 0.0 <= results["phases"]["training"]["ta"] <= 1.0
