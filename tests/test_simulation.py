"""End to end: a real Flower simulation (Ray) on a small real-data subset with one attacker."""

import json
from pathlib import Path

import pytest
import torch

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import load_checkpoint, processor, read_csv
from server_strategies.simulation import run_simulation

# Enough poisoned copies (about 150) and attacker steps that the backdoor holds by round 3.
SMALL = {"dataset": "mnist", "num-clients": 4, "labels-per-client": 10, "data-fraction": 0.1,
         "test-subset": 1000, "lr": 0.05, "poison-lr": 0.1, "poison-epochs": 5, "gamma": 4,
         "trigger": "pixel-9", "victim-label": 9, "attack-label": 0}
ROUNDS = 4


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = ExperimentConfig.from_flat({**SMALL, "data-dir": data_dir, "output-dir": str(out),
                                      "num-rounds": ROUNDS, "run-name": "small"})
    return cfg, run_simulation(cfg)


def test_run_records_ta_and_aa_every_round(trained_run):
    _, run_dir = trained_run
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["round"]) for r in rows] == list(range(ROUNDS + 1))
    assert [r["phase"] for r in rows] == ["init"] + ["train"] * ROUNDS
    for r in rows:
        assert 0.0 <= float(r["ta"]) <= 1.0 and 0.0 <= float(r["aa"]) <= 1.0
    assert all(int(r["attacking"]) == 1 and int(r["replies"]) == 4 for r in rows[1:])
    assert float(rows[-1]["ta"]) > 0.5, "the federation learns"
    assert float(rows[-1]["aa"]) > 0.5, "the backdoor is implanted"


def test_run_directory_holds_config_versions_checkpoint_and_plot(trained_run):
    cfg, run_dir = trained_run
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["num-clients"] == 4 and saved["gamma"] == 4.0
    assert Path(saved["data-dir"]).is_absolute()
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["flwr"].startswith("1.4") and "torch" in versions
    assert versions["processor"] == processor() != ""
    assert (run_dir / "metrics.png").stat().st_size > 1000
    ckpt = load_checkpoint(run_dir / "checkpoints" / "trained.pt")
    assert ckpt["round"] == ROUNDS
    build_model(cfg).load_state_dict(ckpt["state_dict"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["phases"]["training"]["ta"] == pytest.approx(float(read_csv(run_dir / "metrics.csv")[-1]["ta"]))


@pytest.mark.slow
def test_run_starts_from_a_checkpoint_and_continues_round_numbers(trained_run, tmp_path):
    cfg, run_dir = trained_run
    ckpt = run_dir / "checkpoints" / "trained.pt"
    follow = cfg.replace(init_checkpoint=str(ckpt), num_rounds=1, output_dir=str(tmp_path), run_name="")
    rows = read_csv(run_simulation(follow) / "metrics.csv")
    assert [(r["phase"], int(r["round"])) for r in rows] == [("init", ROUNDS), ("train", ROUNDS + 1)]
    start = torch.load(ckpt, weights_only=True)
    assert float(rows[0]["ta"]) == pytest.approx(float(read_csv(run_dir / "metrics.csv")[-1]["ta"]))
    assert start["round"] == ROUNDS


@pytest.mark.slow
def test_dba_run_reports_each_local_trigger(data_dir, tmp_path):
    cfg = ExperimentConfig.from_flat({
        **SMALL, "data-dir": data_dir, "output-dir": str(tmp_path), "num-rounds": 2, "num-clients": 8,
        "partition": "dirichlet", "attack-mode": "all-to-one", "trigger": "dba", "attack-label": 2,
        "num-attackers": 4, "attack-rounds": "2", "aggregation": "dba", "server-lr": 0.5, "fraction": 0.5,
        "gamma": 2, "poison-per-batch": 20, "poison-epochs": 1})
    rows = read_csv(run_simulation(cfg) / "metrics.csv")
    assert [int(r["attacking"]) for r in rows[1:]] == [0, 4], "all four attackers sampled in their round"
    assert all(int(r["clients"]) == 4 for r in rows[1:])
    for piece in range(4):
        assert 0.0 <= float(rows[-1][f"aa_piece{piece}"]) <= 1.0
