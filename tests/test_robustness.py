"""Hostile and faulty clients, through real Flower simulations: nothing they send breaks the run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.models import build_model
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


@pytest.mark.slow
def test_invalid_model_replies_are_dropped_and_counted(data_dir, tmp_path):
    kinds = ["wrong-names", "wrong-shape", "wrong-dtype", "non-finite", "negative-variance", "raise"]
    cfg = tiny(data_dir, tmp_path, **{"model": "mnist-cnn-bn", "num-clients": 8, "attacker-ids": "0,1,2,3,4,5",
                                      "num-rounds": 2, "gamma": 1, "malformed-reply": "/".join(kinds)})
    run_dir = run_simulation(cfg)
    rows = read_csv(run_dir / "metrics.csv")
    for row in rows[1:]:
        assert (int(row["replies"]), int(row["invalid"]), int(row["fault"])) == (2, 5, 1)
    reasons = {int(d["client"]): (d["kind"], d["reason"]) for d in dropped(run_dir) if d["round"] == "1"}
    assert reasons[0][0] == "invalid" and "names" in reasons[0][1]
    assert "shape" in reasons[1][1] and "dtype" in reasons[2][1] and "NaN" in reasons[3][1]
    assert reasons[4][1] == "array 'features.bn1.running_var' holds a negative variance (min -0.001)"
    assert reasons[5][0] == "fault" and "failed on purpose" in reasons[5][1]
    assert_finite_model(run_dir, "trained")
    assert float(rows[-1]["ta"]) > float(rows[0]["ta"]) + 0.05, "the two honest clients still train the model"


@pytest.mark.slow
@pytest.mark.parametrize("statistics", ["scaled", "own"])
def test_model_replacement_that_sends_a_negative_running_variance_is_refused(data_dir, tmp_path, statistics):
    """From a fresh model (running variances 1), an attacker whose variance fell below 1/2 sends 2L - G < 0 at gamma
    2; accepted, it made the mean negative and every output NaN (the recorded batch-norm trainings' round 1). With
    replacement-statistics 'own' it sends its running statistics as trained, and is accepted."""
    cfg = tiny(data_dir, tmp_path, **{"model": "mnist-cnn-bn", "num-clients": 3, "attacker-ids": "0", "num-rounds": 1,
                                      "gamma": 2, "replacement-statistics": statistics})
    run_dir = run_simulation(cfg)
    row = read_csv(run_dir / "metrics.csv")[-1]
    if statistics == "scaled":
        assert (int(row["replies"]), int(row["invalid"])) == (2, 1)
        (refused,) = dropped(run_dir)
        assert refused["client"] == "0" and "running_var' holds a negative variance" in refused["reason"]
    else:
        assert (int(row["replies"]), int(row["invalid"])) == (3, 0) and not (run_dir / "dropped_replies.csv").exists()
    model = build_model(cfg).eval()
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "trained.pt")["state_dict"])
    assert all((v >= 0).all() for k, v in model.state_dict().items() if k.endswith("running_var"))
    assert torch.isfinite(model(torch.rand(8, 1, 28, 28))).all(), "outputs are numbers, not NaN read as class 0"


@pytest.mark.slow
def test_invalid_rankings_votes_accuracies_and_masks_are_dropped(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 6, "attacker-ids": "0,1,2,3", "num-rounds": 1,
                                      "malformed-reply": "bad-ranking/bad-votes/bad-accuracy/bad-masks",
                                      "defense": "prune,aw?,finetune,aw,rnp?",
                                      "pruning-accuracy": "clients", "finetune-rounds": 1, "curve-points": 2})
    run_dir = run_simulation(cfg)
    bad = [d for d in dropped(run_dir) if d["phase"] in ("cleanse", "finetune")]
    by_client = {int(d["client"]): d["reason"] for d in bad}
    assert "permutation" in by_client[0]
    assert "votes to prune" in by_client[1]
    assert "[0, 1]" in by_client[2]
    assert "masks lies outside [0, 1]" in by_client[3]
    assert json.loads((run_dir / "results.json").read_text())["phases"]["prune+finetune+aw+rnp"]["clients"] == 5
    results = (run_dir / "results.md").read_text()
    assert "All TA" in results
    assert_finite_model(run_dir, "all")


@pytest.mark.slow
def test_too_few_valid_replies_skip_the_round_and_keep_the_model(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 3, "attacker-ids": "0,1", "num-rounds": 1,
                                      "malformed-reply": "non-finite", "min-replies": 2})
    run_dir = run_simulation(cfg)
    rows = read_csv(run_dir / "metrics.csv")
    assert rows[1]["ta"] == rows[0]["ta"], "skipped round: the global model is unchanged"
    assert int(rows[1]["replies"]) == 1 and int(rows[1]["invalid"]) == 2
    assert_finite_model(run_dir, "trained")


@pytest.mark.slow
def test_a_client_killed_mid_round_does_not_stop_the_run(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 4, "num-rounds": 2, "malformed-reply": "crash"})
    run_dir = run_simulation(cfg)
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    lost = [d for d in dropped(run_dir) if int(d["client"]) == 0]
    assert len(lost) == 2 and {d["kind"] for d in lost} <= {"fault", "missing"}
    assert all(int(r["replies"]) == 3 for r in rows[1:])
    assert_finite_model(run_dir, "trained")


@pytest.mark.slow
def test_a_hanging_client_times_out(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 3, "num-rounds": 1, "malformed-reply": "hang",
                                      "round-timeout": 8})
    run_dir = run_simulation(cfg)
    lost = dropped(run_dir)
    assert [(d["client"], d["kind"]) for d in lost] == [("0", "missing")]
    assert int(read_csv(run_dir / "metrics.csv")[1]["replies"]) == 2


def comparable(rows: list[dict]) -> list[dict]:
    """Metrics rows without their timings (seconds, aggregate_seconds)."""
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


@pytest.mark.slow
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
    assert (out / "r" / ".lock").read_text() == f"{proc.pid}\n", "the killed run left its .lock behind"
    started = json.loads((out / "r" / "config.json").read_text())

    resumed = run_simulation(ExperimentConfig.from_flat({"output-dir": str(out), "run-name": "r", "resume": True,
                                                        "data-dir": data_dir}))
    assert comparable(read_csv(resumed / "metrics.csv")) == comparable(read_csv(straight / "metrics.csv"))
    assert json.loads((resumed / "config.json").read_text()) == started, "the record of how the run started"
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


def test_a_checkpoint_of_another_model_is_one_error_naming_the_setting(tmp_path):
    from fl_backdoor.models import build_model
    from fl_backdoor.run_dir import CheckpointError, save_checkpoint
    from server_strategies.pipeline import initial_model

    path = tmp_path / "mnist.pt"
    mnist = ExperimentConfig.from_flat({"dataset": "mnist"})
    save_checkpoint(path, build_model(mnist).state_dict(), round=7, mask={"layer": "features.conv2", "size": 50,
                                                                           "pruned": [3]})
    gm = initial_model(mnist.replace(init_checkpoint=str(path)))
    assert gm.round == 7 and gm.mask is not None and gm.mask.pruned == (3,)
    with pytest.raises(CheckpointError, match=r"^init-checkpoint: .*mnist\.pt does not fit model fmnist-cnn: "):
        initial_model(ExperimentConfig.from_flat({"dataset": "fashion-mnist", "init-checkpoint": str(path)}))


def test_duplicated_unexpected_failed_and_lost_replies_are_each_counted(monkeypatch):
    from flwr.app import Error, Message, MetricRecord, RecordDict
    from flwr.common.constant import ErrorCode

    from server_strategies.federation import Federation

    try:  # Flower 1.42 builds messages only inside a run
        from flwr.supercore.task_identity import TaskIdentity
        for name in ("_run_id", "_node_id", "_task_id"):
            monkeypatch.setattr(TaskIdentity, name, 1)
    except ImportError:
        pass

    def sent_to(node: int, message_id: str) -> Message:
        message = Message(RecordDict(), dst_node_id=node, message_type="train")
        message.metadata.__dict__["_message_id"] = message_id  # the grid sets it when it sends
        return message

    def check(content: RecordDict) -> float:
        value = content.metric_records["metrics"]["value"]
        assert isinstance(value, float)
        return value

    cfg = ExperimentConfig.from_flat({"num-clients": 5})
    federation = Federation(cfg, grid=None, client_nodes={c: 100 + c for c in range(5)})
    messages = [sent_to(100 + c, f"m{c}") for c in range(5)]
    sent = {f"m{c}": c for c in range(5)}
    stranger = sent_to(100, "not-sent")

    def answer(message: Message, value: float) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"value": value})}), reply_to=message)

    replies = [answer(messages[3], 3.0), answer(messages[0], 0.5),
               answer(messages[0], 9.0),  # the same node answers twice: the second is dropped
               answer(stranger, 7.0),  # a reply to no message of this round
               Message(Error(ErrorCode.NODE_UNAVAILABLE, "heartbeat lost"), reply_to=messages[1]),
               Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "Traceback\nValueError: boom"),
                       reply_to=messages[2])]
    valid = federation.screen(replies, sent, check, server_round=4, phase="train")
    assert valid == [(0, 0.5), (3, 3.0)], "first reply of each client, ordered by client"
    kinds = [(d["client"], d["kind"]) for d in federation.dropped]
    assert kinds == [(0, "invalid"), (None, "invalid"), (1, "missing"), (2, "fault"), (4, "missing")]
    assert federation.dropped[3]["reason"] == "client error: ValueError: boom"
    assert federation.drop_counts(4, "train") == {"invalid": 2, "fault": 1, "missing": 2}


@pytest.mark.slow
def test_a_run_killed_between_a_fine_tuning_round_and_its_accuracy_resumes_to_the_same_result(
        data_dir, tmp_path, monkeypatch):
    from server_strategies.cleansing import Cleansing

    values = {"num-clients": 3, "num-rounds": 2, "defense": "prune,finetune", "finetune-rounds": 3,
              "finetune-patience": 3, "gamma": 2, "trigger": "pixel-9", "poison-epochs": 2, "run-name": "r"}
    straight = run_simulation(tiny(data_dir, tmp_path / "straight", **values))

    class Killed(Exception):
        pass

    measure = Cleansing.model_accuracy

    def dies_after_the_second_round(self: Cleansing) -> float:
        if self.run.global_model.round == values["num-rounds"] + 2:  # its model and metrics are saved by now
            raise Killed
        return measure(self)

    monkeypatch.setattr(Cleansing, "model_accuracy", dies_after_the_second_round)
    with pytest.raises(Killed):
        run_simulation(tiny(data_dir, tmp_path / "killed", **values))
    monkeypatch.undo()
    resumed = run_simulation(ExperimentConfig.from_flat({"output-dir": str(tmp_path / "killed"), "run-name": "r",
                                                        "resume": True, "data-dir": data_dir}))
    assert comparable(read_csv(resumed / "metrics.csv")) == comparable(read_csv(straight / "metrics.csv"))
    assert (resumed / "results.md").read_text() == (straight / "results.md").read_text()


def test_two_runs_never_write_one_run_directory(tmp_path):
    from fl_backdoor.run_dir import RunDirectory, RunDirectoryInUse

    cfg = ExperimentConfig.from_flat({"output-dir": str(tmp_path), "run-name": "r"})
    first = RunDirectory.create(cfg)
    assert RunDirectory.create(cfg).path == tmp_path / "r-2", "a second fresh run with the name gets its own"
    (first.path / "checkpoints").mkdir()
    (first.path / "checkpoints" / "latest.pt").write_bytes(b"")
    with pytest.raises(RunDirectoryInUse, match=rf"{first.path} is being written by another run \(pid {os.getpid()}\)"):
        RunDirectory.create(cfg.replace(resume=True))  # e.g. a resume started while the run still goes on
    first.release()
    RunDirectory.create(cfg.replace(resume=True)).release()


def test_the_lock_of_a_killed_run_is_free_again(tmp_path):
    from fl_backdoor.run_dir import RunDirectory, RunDirectoryInUse

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from fl_backdoor.run_dir import RunDirectory; "
                               "held = RunDirectory(Path(sys.argv[1])); held.lock(); "
                               "print('locked', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunDirectoryInUse, match=f"pid {holder.pid}"):
        RunDirectory(tmp_path).lock()
    holder.kill()
    holder.wait()
    # the killed run leaves its .lock file behind; the lock itself went with the process (issue 43)
    assert (tmp_path / ".lock").read_text() == f"{holder.pid}\n"
    run_dir = RunDirectory(tmp_path)
    run_dir.lock()
    assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    run_dir.release()


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes(data_dir, tmp_path, monkeypatch):
    import errno

    from fl_backdoor import run_dir as run_dir_module
    from fl_backdoor.config import UserError

    write = run_dir_module.atomic_write_bytes
    checkpoints: list[str] = []

    def disk_fills_up(path: Path, data: bytes) -> None:
        if path.name == "latest.pt":
            checkpoints.append(path.name)
            if len(checkpoints) == 2:  # round 1's checkpoint no longer fits (the first is of round 0)
                raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(run_dir_module, "atomic_write_bytes", disk_fills_up)
    cfg = tiny(data_dir, tmp_path, **{"num-clients": 2, "num-rounds": 3, "run-name": "r"})
    with pytest.raises(UserError, match=r"^no space left on the device of output-dir .*resume=true"):
        run_simulation(cfg)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "latest.pt")["round"] == 0, "the last complete one"
    resumed = run_simulation(cfg.replace(resume=True))
    assert [r["round"] for r in read_csv(resumed / "metrics.csv")] == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_resumes_by_starting_over(data_dir, tmp_path):
    from fl_backdoor.run_dir import RunDirectory

    cfg = tiny(data_dir, tmp_path, **{"num-clients": 2, "num-rounds": 2, "run-name": "r"})
    RunDirectory.create(cfg).release()  # a run killed while Ray was starting leaves config, versions, no checkpoint
    resumed = run_simulation(ExperimentConfig.from_flat({"output-dir": str(tmp_path), "run-name": "r",
                                                        "resume": True}))
    assert resumed == tmp_path / "r"
    assert [r["round"] for r in read_csv(resumed / "metrics.csv")] == ["0", "1", "2"]
    assert (resumed / "results.json").exists()


def test_a_state_saved_under_the_old_field_name_resumes_its_steps_progress(tmp_path):
    from fl_backdoor.run_dir import RunDirectory
    from server_strategies.server_run import RunState

    (tmp_path / "state.json").write_text(json.dumps({"start_round": 3, "done": ["prune"],
                                                    "finetune": {"ibau_start": 7}}))
    state = RunState.load(RunDirectory(tmp_path))
    assert (state.start_round, state.done, state.step_progress) == (3, ["prune"], {"ibau_start": 7})
    state.save(RunDirectory(tmp_path))
    assert "finetune" not in json.loads((tmp_path / "state.json").read_text())


def test_a_long_wait_reports_the_replies_as_they_arrive_and_a_timeout_ends_it(monkeypatch):
    from types import SimpleNamespace

    from server_strategies import federation

    now = [0.0]
    monkeypatch.setattr(federation.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))

    ready = {"m0": 30.0, "m1": 70.0, "m2": 130.0}  # when each message's reply can be pulled

    class Grid:
        pull_interval = 20.0

        def push_messages(self, messages):
            return [f"m{i}" for i in range(len(messages))]

        def pull_messages(self, ids):
            due = sorted(i for i in ids if ready[i] <= now[0])
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in due]

    reports = []

    def wait(timeout):
        now[0] = 0.0
        reports.clear()
        got = federation.wait_for_replies(Grid(), ["a", "b", "c"], timeout, lambda *r: reports.append(r),
                                          clock=lambda: now[0])
        return [m.metadata.reply_to_message_id for m in got], now[0]

    assert federation.QUIET_WAIT_S == 60.0
    assert wait(3600.0) == (["m0", "m1", "m2"], 140.0), "pulled at 0, 20, ... 140 s; done at the last reply"
    assert reports == [(2, 3, 80.0), (3, 3, 140.0)], "quiet for the first 60 s (m0 at 40 s), then each arrival"
    assert wait(100.0) == (["m0", "m1"], 100.0), "the timeout ends the wait without the third reply"
    assert reports == [(2, 3, 80.0)]
