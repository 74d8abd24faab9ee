"""Sweeps: experiment identity, shared pretraining, skip/resume/restart decisions, and real sweeps on Ray."""

import json
from pathlib import Path

import pytest

from fl_backdoor.config import ConfigError, ExperimentConfig, UserError
from fl_backdoor.run_dir import read_csv
from fl_backdoor.sweeps import (
    Experiment,
    actors_for,
    clean_pretraining,
    default_parallel,
    finished_runs,
    run_sweep,
    submission,
    with_parents,
)

FAILING_SEED = 13


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the module's sweeps, shut down after (later tests start their own)."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def fake_runner(cfg: ExperimentConfig) -> Path:
    """Stands in for run_simulation inside the Ray task: logs its call, then 'finishes' the run."""
    runs = Path(cfg.output_dir)
    with open(runs.parent / "calls.jsonl", "a") as fh:
        fh.write(json.dumps({"name": cfg.run_name, "resume": cfg.resume, "init": cfg.init_checkpoint}) + "\n")
    if cfg.seed == FAILING_SEED:
        raise RuntimeError("planned failure")
    run_dir = runs / cfg.run_name
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "trained.pt").write_text("model")
    (run_dir / "results.json").write_text("{}")
    return run_dir


def calls(results: Path) -> list[dict]:
    path = results / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def exp(label: str, **values) -> Experiment:
    return Experiment(label, {"dataset": "mnist", **{k.replace("_", "-"): v for k, v in values.items()}})


# --- identity -------------------------------------------------------------------------------------------
def test_name_follows_what_the_run_computes_not_where_it_runs():
    a = exp("x", seed=1)
    assert a.name == exp("x", seed=1).name and a.name.startswith("x-")
    assert a.name != exp("x", seed=2).name
    assert a.name == exp("x", seed=1, data_dir="/elsewhere", client_cpus=2).name
    assert a.child("d", defense="fp").name != exp("x", seed=2).child("d", defense="fp").name, "parent is identity"


def test_a_training_run_is_shared_by_defenses_that_differ_only_in_defense_settings():
    trained = exp("t", defense="train-only", curve_points=4, aw_max_drop=0.02)
    assert trained.name == exp("t", defense="train-only", curve_points=32, aw_max_drop=0.01).name
    assert trained.name != exp("t", defense="train-only", lr=0.3).name
    assert (trained.child("d", defense="fp-aw", aw_max_drop=0.01).name
            != trained.child("d", defense="fp-aw", aw_max_drop=0.02).name), \
        "a defense run's name follows its defense settings"


def test_bad_experiments_are_refused_before_running():
    with pytest.raises(ConfigError, match="num-clients"):
        exp("x", num_clients=0)
    with pytest.raises(UserError, match="run-name"):
        exp("x", run_name="mine")
    with pytest.raises(UserError, match="label"):
        exp("a/b")


def test_clean_pretraining_is_shared_by_pairs_that_differ_only_in_attack_or_defense():
    base = {"dataset": "mnist", "num-rounds": 20, "gamma": 3, "trigger": "pixel-9"}
    one = clean_pretraining({**base, "attack-label": 0, "defense": "all"}, 5)
    other = clean_pretraining({**base, "attack-label": 2, "trigger": "pixel-1", "gamma": 2, "defense": "fp"}, 5)
    assert one.name == other.name
    assert one.cfg.num_rounds == 5 and one.cfg.attack_rounds == "none" and one.cfg.defense == "train-only"
    assert clean_pretraining({**base, "victim-label": 0, "attack-label": 9}, 5).name != one.name, "other partition"
    assert clean_pretraining({**base, "lr": 0.123}, 5).name != one.name
    assert clean_pretraining({**base, "victim-label": 1, "attack-label": 9}, 5).cfg.attack_label != 1


def test_parents_come_once_and_first():
    parent = exp("p")
    kids = [parent.child("a", seed=1), parent.child("b", seed=2)]
    order = with_parents(kids + [kids[0]])
    assert [e.label for e in order] == ["p", "a", "b"]
    assert kids[0].cfg.num_rounds == 0 and kids[0].parent is parent


def test_finished_runs_lists_only_runs_with_results_and_runs_nothing(tmp_path):
    parent = exp("p")
    done, running = parent.child("a", seed=1), parent.child("b", seed=2)
    for e, files in ((parent, ["results.json"]), (done, ["results.json"]), (running, ["checkpoints/latest.pt"])):
        for name in files:
            (tmp_path / "runs" / e.name / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "runs" / e.name / name).write_text("{}")
    outcome = finished_runs([done, running], tmp_path)
    assert set(outcome.finished) == {parent.name, done.name} and outcome.run_dir(running) is None
    assert not (tmp_path / "logs").exists(), "nothing ran"


def test_submission_continues_a_checkpointed_run_and_restarts_one_without_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    parent = exp("p")
    child = parent.child("c", defense="fp")
    fresh = submission(child, runs)
    assert fresh["run-name"] == child.name and not fresh.get("resume")
    assert fresh["init-checkpoint"] == str(runs / parent.name / "checkpoints" / "trained.pt")
    assert Path(fresh["data-dir"]).is_absolute()

    stale = runs / child.name
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    assert not submission(child, runs).get("resume") and not stale.exists(), "nothing to continue: start over"

    (stale / "checkpoints").mkdir(parents=True)
    (stale / "checkpoints" / "latest.pt").write_text("x")
    (stale / "config.json").write_text("{}")
    assert submission(child, runs) == {"output-dir": str(runs), "run-name": child.name, "resume": True}


def test_parallel_bound_and_actor_share():
    exps = [exp("a", num_clients=10)]
    assert default_parallel(exps, 64, on_cluster=False) == 1
    assert default_parallel(exps, 64, on_cluster=True) == 6
    assert actors_for(exps[0], 2, 1) == 2
    assert actors_for(exps[0], 64, 6) == 10, "never more actors than clients"
    assert actors_for(exps[0], 64, 16) == 4


# --- sweeps on Ray with a stand-in runner -----------------------------------------------------------------
@pytest.mark.slow
def test_rerun_skips_finished_resumes_checkpointed_and_restarts_the_rest(tmp_path):
    done, killed, stale, new = exp("done"), exp("killed", seed=1), exp("stale", seed=2), exp("new", seed=3)
    runs = tmp_path / "runs"
    (runs / done.name).mkdir(parents=True)
    (runs / done.name / "results.json").write_text("{}")
    (runs / killed.name / "checkpoints").mkdir(parents=True)
    (runs / killed.name / "checkpoints" / "latest.pt").write_text("x")
    (runs / killed.name / "config.json").write_text("{}")
    (runs / stale.name).mkdir()
    (runs / stale.name / "config.json").write_text("{}")

    outcome = run_sweep([done, killed, stale, new], fake_runner, tmp_path, progress=False)
    made = {c["name"]: c for c in calls(tmp_path)}
    assert set(made) == {killed.name, stale.name, new.name}, "the finished run is not run again"
    assert made[killed.name]["resume"] is True
    assert made[stale.name]["resume"] is False and made[new.name]["resume"] is False
    assert outcome.skipped == [done.name] and not outcome.failed
    assert set(outcome.finished) == {done.name, killed.name, stale.name, new.name}
    assert all((tmp_path / "logs" / f"{e.name}.log").is_file() for e in (killed, stale, new))

    again = run_sweep([done, killed, stale, new], fake_runner, tmp_path, progress=False)
    assert len(calls(tmp_path)) == 3, "a second run of a finished sweep runs nothing"
    assert sorted(again.skipped) == sorted(outcome.finished)


@pytest.mark.slow
def test_shared_parent_runs_once_before_its_children_and_failures_stop_only_their_descendants(tmp_path):
    parent = exp("shared")
    kids = [parent.child(f"k{i}", seed=i) for i in range(3)]
    broken = exp("broken", seed=FAILING_SEED)
    orphan = broken.child("orphan")
    outcome = run_sweep(kids + [orphan], fake_runner, tmp_path, parallel=2, progress=False)
    made = calls(tmp_path)
    names = [c["name"] for c in made]
    assert names.count(parent.name) == 1
    assert all(names.index(parent.name) < names.index(k.name) for k in kids), "the parent first"
    trained = str(tmp_path / "runs" / parent.name / "checkpoints" / "trained.pt")
    assert all(c["init"] == trained for c in made if c["name"] in {k.name for k in kids})
    assert set(outcome.finished) == {parent.name} | {k.name for k in kids}
    assert "planned failure" in outcome.failed[broken.name]
    assert outcome.failed[orphan.name].startswith("not run") and orphan.name not in names


# --- a real sweep: Ray tasks running Flower simulations ----------------------------------------------------
@pytest.mark.slow
def test_real_sweep_trains_once_defends_from_its_model_and_resumes(data_dir, tmp_path):
    training = Experiment("train", {"dataset": "mnist", "data-dir": data_dir, "num-clients": 3,
                                    "labels-per-client": 10, "data-fraction": 0.02, "test-subset": 300,
                                    "num-rounds": 1, "lr": 0.05, "curve-points": 0, "gamma": 2})
    defense = training.child("fp-aw", defense="fp-aw")
    outcome = run_sweep([defense], _run_simulation(), tmp_path, progress=False)
    assert not outcome.failed and set(outcome.finished) == {training.name, defense.name}

    trained = json.loads((outcome.run_dir(training) / "results.json").read_text())["phases"]["training"]
    defended_dir = outcome.run_dir(defense)
    results = json.loads((defended_dir / "results.json").read_text())
    assert results["phases"]["training"] == pytest.approx(trained), "the defense starts from the trained model"
    assert {"fp", "fp-aw"} <= set(results["phases"])
    assert [r["phase"] for r in read_csv(defended_dir / "metrics.csv")] == ["init"], "no new training rounds"
    assert "run directory" in (tmp_path / "logs" / f"{defense.name}.log").read_text()

    # a run that started from a checkpoint and was stopped after its last step: the rerun resumes it
    (defended_dir / "results.json").unlink()
    again = run_sweep([defense], _run_simulation(), tmp_path, progress=False)
    assert again.skipped == [training.name] and not again.failed
    assert "resuming" in (tmp_path / "logs" / f"{defense.name}.log").read_text()
    assert json.loads((defended_dir / "results.json").read_text())["row"] == results["row"]
    started = json.loads((defended_dir / "config.json").read_text())
    assert started["init-checkpoint"] == str(outcome.run_dir(training) / "checkpoints" / "trained.pt")
    assert started["resume"] is False, "the resume kept the record of how the run started"
    assert len(json.loads((defended_dir / "resumes.json").read_text())) == 1


def _run_simulation():
    from server_strategies.simulation import run_simulation

    return run_simulation
