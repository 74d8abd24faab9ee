"""Hostile and faulty clients, through real Flower simulations: nothing they send breaks the run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.run_dir import load_checkpoint, read_csv
from server_strategies.simulation import run_simulation

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset": "mnist", "labels-per-client": 10, "data-fraction": 0.02, "test-subset": 500,
        "lr": 0.05, "curve-points": 0, "round-timeout": 60}


def tiny(data_dir, out, **values):
    return ExperimentConfig.from_flat({**TINY, "data-dir": data_dir, "output-dir": str(out), **values})


def dropped(run_dir: Path) -> list[dict]:
    return read_csv(run_dir / "dropped_replies.csv")


def assert_finite_model(run_dir: Path, name: str) -> None:
    state = load_checkpoint(run_dir / "checkpoints" / f"{name}.pt")["state_dict"]
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_invalid_model_replies_are_dropped_and_counted(data_dir, tmp_path):
    kinds = ["wrong-names", "wrong-shape", "wrong-dtype", "non-finite", "raise"]
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 7, "attacker-ids": "0,1,2,3,4", "num-rounds": 2,
                                      "malformed-reply": "/".join(kinds)})
    run_dir = run_simulation(cfg)
    rows = read_csv(run_dir / "metrics.csv")
    for row in rows[1:]:
        assert (int(row["replies"]), int(row["invalid"]), int(row["fault"])) == (2, 4, 1)
    reasons = {int(d["client"]): (d["kind"], d["reason"]) for d in dropped(run_dir) if d["round"] == "1"}
    assert reasons[0][0] == "invalid" and "names" in reasons[0][1]
    assert "shape" in reasons[1][1] and "dtype" in reasons[2][1] and "NaN" in reasons[3][1]
    assert reasons[4][0] == "fault" and "failed on purpose" in reasons[4][1]
    assert_finite_model(run_dir, "trained")
    assert float(rows[-1]["ta"]) > float(rows[0]["ta"]) + 0.05, "the two honest clients still train the model"


def test_invalid_rankings_votes_and_accuracies_are_dropped(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 6, "attacker-ids": "0,1,2", "num-rounds": 1,
                                      "malformed-reply": "bad-ranking/bad-votes/bad-accuracy", "defense": "all",
                                      "pruning-accuracy": "clients", "finetune-rounds": 1, "curve-points": 2})
    run_dir = run_simulation(cfg)
    bad = [d for d in dropped(run_dir) if d["phase"] in ("cleanse", "finetune")]
    by_client = {int(d["client"]): d["reason"] for d in bad}
    assert "permutation" in by_client[0]
    assert "votes to prune" in by_client[1]
    assert "[0, 1]" in by_client[2]
    results = (run_dir / "results.md").read_text()
    assert "All TA" in results
    assert_finite_model(run_dir, "all")


def test_too_few_valid_replies_skip_the_round_and_keep_the_model(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 3, "attacker-ids": "0,1", "num-rounds": 1,
                                      "malformed-reply": "non-finite", "min-replies": 2})
    run_dir = run_simulation(cfg)
    rows = read_csv(run_dir / "metrics.csv")
    assert rows[1]["ta"] == rows[0]["ta"], "skipped round: the global model is unchanged"
    assert int(rows[1]["replies"]) == 1 and int(rows[1]["invalid"]) == 2
    assert_finite_model(run_dir, "trained")


def test_a_client_killed_mid_round_does_not_stop_the_run(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 4, "num-rounds": 2, "malformed-reply": "crash"})
    run_dir = run_simulation(cfg)
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    lost = [d for d in dropped(run_dir) if int(d["client"]) == 0]
    assert len(lost) == 2 and {d["kind"] for d in lost} <= {"fault", "missing"}
    assert all(int(r["replies"]) == 3 for r in rows[1:])
    assert_finite_model(run_dir, "trained")


def test_a_hanging_client_times_out(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 3, "num-rounds": 1, "malformed-reply": "hang",
                                      "round-timeout": 8})
    run_dir = run_simulation(cfg)
    lost = dropped(run_dir)
    assert [(d["client"], d["kind"]) for d in lost] == [("0", "missing")]
    assert int(read_csv(run_dir / "metrics.csv")[1]["replies"]) == 2


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_killed_run_resumes_to_the_same_result(data_dir, tmp_path):
    values = {"num-clients": 3, "num-rounds": 4, "defense": "all", "finetune-rounds": 2, "curve-points": 2,
              "gamma": 2, "trigger": "pixel-9", "poison-epochs": 2}
    straight = run_simulation(tiny(data_dir, tmp_path / "straight", **values))

    out = tmp_path / "killed"
    args = [f"{k}={v}" for k, v in {**TINY, **values, "data-dir": data_dir, "output-dir": out,
                                     "run-name": "r"}.items()]
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py")] + [a for arg in args for a in ("-c", arg)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "r" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and len(read_csv(metrics)) < 3:  # init row + 2 rounds
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = read_csv(metrics)
    assert 3 <= len(interrupted) < 5, "killed during training"

    resumed = run_simulation(ExperimentConfig.from_flat({"output-dir": str(out), "run-name": "r", "resume": True,
                                                        "data-dir": data_dir}))
    assert comparable(read_csv(resumed / "metrics.csv")) == comparable(read_csv(straight / "metrics.csv"))
    a = (straight / "results.md").read_text()
    b = (resumed / "results.md").read_text()
    assert a == b


def test_a_client_claiming_more_examples_than_it_holds_weighs_as_its_data():
    from server_strategies.cleansing import bounded_mean

    sizes = [100, 100, 300]
    honest = [(0, [0.9, 0.8], 100), (2, [0.6, 0.5], 300)]
    assert bounded_mean(honest, sizes).tolist() == pytest.approx([(90 + 180) / 400, (80 + 150) / 400])
    hostile = [*honest, (1, [0.0, 0.0], 10**12)]  # one attacker claims 10^12 examples
    assert bounded_mean(hostile, sizes).tolist() == pytest.approx([270 / 500, 230 / 500])
    assert bounded_mean([(0, [1.0], -5), (1, [0.5], 100)], sizes).tolist() == [0.5], "a negative count weighs 0"


def test_a_checkpoint_that_holds_objects_is_not_unpickled(tmp_path):
    from fl_backdoor.run_dir import CheckpointError, load_checkpoint

    path = tmp_path / "shared.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Path("anything")}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "round": 3, "mask": None, "config": {"seed": 0}}, path)
    assert load_checkpoint(path)["round"] == 3
