"""The field's attacks (issue 14): each one's defining arithmetic on hand-made tensors, then through Flower."""

from __future__ import annotations

import math

import pytest
import torch

from clients.behaviours.norm_bounded import project_onto_ball
from clients.local_training import run_local_job
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import read_csv
from server_strategies.simulation import run_simulation


def update_norm(local: dict[str, torch.Tensor], center: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(((local[k].double() - v.double()) ** 2).sum())
                         for k, v in center.items() if v.is_floating_point()))


def test_the_projection_lands_on_the_ball_and_leaves_integers_alone():
    center = {"w": torch.zeros(2), "n": torch.tensor(3)}
    state = {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(7)}
    assert project_onto_ball(state, center, 1.0) == pytest.approx(5.0)
    assert state["w"].tolist() == pytest.approx([0.6, 0.8], rel=2e-6) and int(state["n"]) == 7
    inside = {"w": torch.tensor([0.3, 0.4]), "n": torch.tensor(7)}
    project_onto_ball(inside, center, 1.0)
    assert inside["w"].tolist() == pytest.approx([0.3, 0.4]), "inside the ball nothing moves"


def test_pgd_submits_a_boosted_update_no_longer_than_its_bound(data_dir):
    base = {"data-dir": data_dir, "data-fraction": 0.02, "num-clients": 2, "gamma": 2, "poison-epochs": 1,
            "trigger": "pixel-9"}
    cfg = ExperimentConfig.from_flat(base)
    state = build_model(cfg).state_dict()
    free = run_local_job(cfg, 0, state, 1)
    bound = update_norm(free.state, state) / 10
    pgd = run_local_job(cfg.replace(adaptive_attack="pgd", pgd_norm=bound), 0, state, 1)
    assert pgd.attacked and update_norm(pgd.state, state) == pytest.approx(bound, rel=1e-5)


@pytest.mark.parametrize("attack", ["none", "pgd"])
def test_norm_clipping_catches_the_boosted_attacker_but_not_pgd_under_its_bound(attack, data_dir, tmp_path):
    cfg = ExperimentConfig.from_flat({"dataset": "mnist", "num-clients": 4, "labels-per-client": 10,
                                      "data-fraction": 0.02, "test-subset": 300, "lr": 0.05, "num-rounds": 2,
                                      "curve-points": 0, "trigger": "pixel-9", "gamma": 4,
                                      "aggregation": "norm-clip", "clip-norm": 0.5, "adaptive-attack": attack,
                                      "pgd-norm": 0.5, "data-dir": data_dir, "output-dir": str(tmp_path)})
    rows = [r for r in read_csv(run_simulation(cfg) / "metrics.csv") if r["phase"] == "train"]
    caught = [int(r["flagged_attackers"]) for r in rows]
    assert caught == ([0, 0] if attack == "pgd" else [1, 1])
