"""Paper targets run as real sweeps on Ray, with stand-in runners: Table IV's comparisons are sweep runs that
its report reads, and the paper scripts still run by path."""

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.paper import run_plan
from experiments.scales import SCALES, Setup
from experiments.targets import table4
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.run_dir import write_csv, write_json

ROOT = Path(__file__).resolve().parent.parent
CENTRALIZED = ("Training (backdoored)", "Federated All", "ANP (threshold 0.2)", "Neural Cleanse (nothing flagged)")


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """One local Ray for the module's sweeps, shut down after (later tests start their own)."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _log_call(cfg: ExperimentConfig, runner: str) -> Path:
    runs = Path(cfg.output_dir)
    with open(runs.parent / "calls.jsonl", "a") as fh:
        fh.write(json.dumps({"runner": runner, "name": cfg.run_name, "init": cfg.init_checkpoint}) + "\n")
    (runs / cfg.run_name).mkdir(parents=True, exist_ok=True)
    return runs / cfg.run_name


def fake_simulation(cfg: ExperimentConfig) -> Path:
    """Stands in for run_simulation in the Ray task: a trained model and a results row."""
    run_dir = _log_call(cfg, "simulation")
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "trained.pt").write_text("model")
    row = {"vl": cfg.victim_label, "al": cfg.attack_label, "training_ta": 85.0, "training_aa": 95.0,
           "all_ta": 83.0, "all_aa": 10.0 + cfg.attack_label}
    write_json(run_dir / "results.json", {"row": row})
    return run_dir


def fake_comparison(cfg: ExperimentConfig) -> Path:
    """Stands in for ComparisonRun in the Ray task: a comparison table of the parent's model."""
    run_dir = _log_call(cfg, "comparison")
    rows = [{"defense": name, "ta": 80.0 + i, "aa": 20.0 - i} for i, name in enumerate(CENTRALIZED)]
    write_csv(run_dir / "table.csv", rows)
    write_json(run_dir / "results.json", {"rows": rows})
    return run_dir


def calls(results: Path) -> list[dict[str, str]]:
    path = results / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def failing_runner(cfg: ExperimentConfig) -> Path:
    raise AssertionError(f"report-only ran {cfg.run_name}")


@pytest.mark.slow
def test_table4_runs_each_comparison_once_as_a_sweep_run_and_its_report_only_reads_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one Fashion-MNIST pair, no shared clean rounds, no MNIST or CIFAR-10: three runs in all
    monkeypatch.setitem(SCALES, "one-pair", dataclasses.replace(
        SCALES["tiny"], mnist_pairs=[], fmnist_pairs=[(9, 2)], cifar_labels=[]))
    plan = table4(Setup("one-pair", [], 0, None))
    assert plan.then is not None
    faked = dataclasses.replace(plan, runner=fake_simulation, then=dataclasses.replace(plan.then,
                                                                                       runner=fake_comparison))
    results, out = tmp_path / "results", tmp_path / "results" / "table4"

    outcome = run_plan(faked, results, progress=False)
    (defense,) = plan.experiments
    assert defense.parent is not None
    training = defense.parent
    made = calls(results)
    assert sorted((c["runner"], c["name"].split("-")[1]) for c in made) == [
        ("comparison", "9to2"), ("simulation", "9to2"), ("simulation", "9to2")]
    (compared,) = [c for c in made if c["runner"] == "comparison"]
    assert compared["init"] == str(results / "runs" / training.name / "checkpoints" / "trained.pt")
    assert len(outcome.finished) == 3 and not outcome.failed
    plan.report(outcome, out)
    table = (out / "table.md").read_text()
    assert "| Fashion-MNIST | 1 | 85.0 | 95.0 | 82.0 | 18.0 | 83.0 | 17.0 | 83.0 | 12.0 |" in table, table
    assert "Neural Cleanse TA" in table and "Not finished" not in table

    failing = dataclasses.replace(plan, runner=failing_runner, then=dataclasses.replace(plan.then,
                                                                                        runner=failing_runner))
    again = run_plan(failing, results, report_only=True)
    assert calls(results) == made, "report-only runs nothing"
    assert again.finished == outcome.finished and sorted(again.skipped) == sorted(outcome.finished)
    plan.report(again, tmp_path / "again")
    assert (tmp_path / "again" / "table.md").read_text() == table
    assert run_plan(failing, results, progress=False).finished == outcome.finished, "a rerun skips finished runs"


def test_paper_script_runs_by_path_and_as_a_module(tmp_path: Path) -> None:
    for command in (["experiments/paper.py"], ["-m", "experiments.paper"]):
        done = subprocess.run([sys.executable, *command, "table2", "--scale", "tiny", "--report-only",
                               "--results-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert "table2: 0 runs finished" in done.stdout
    assert "(no finished runs)" in (tmp_path / "table2" / "table.md").read_text()


@pytest.mark.parametrize(("option", "value", "said"), [
    ("--factors", "chosen,nope", "unknown factor(s) nope; choose from chosen, "),
    ("--rules", "krum,nope", "unknown aggregation rule(s) nope; choose from paper, "),
    ("--defenses", " , ", "unknown matrix defense(s) (none given); choose from all, "),
])
def test_a_bad_name_list_is_one_error_line_naming_the_choices(tmp_path: Path, option: str, value: str,
                                                              said: str) -> None:
    done = subprocess.run([sys.executable, "experiments/paper.py", "matrix", option, value, "--report-only",
                           "--results-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and f"argument {option}: {said}" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir()), "nothing ran, nothing written"
