"""Flower's deployment runtime for real: a SuperLink and three SuperNodes as processes on localhost.

Each test starts the processes (fl_backdoor.deployment.LocalFederation), submits the
app with `flwr run . local --stream`, and reads the run directory the ServerApp wrote.
Every SuperNode starts one `flwr-clientapp` process per message, so a round costs
seconds of process start-up; the settings are as small as still exercise every phase.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from fl_backdoor.deployment import LocalFederation, flower_tool, make_certificates
from fl_backdoor.run_dir import read_csv
from server_strategies.nodes import assign_clients

pytestmark = pytest.mark.slow  # the slow tier: pytest -m slow


ROOT = Path(__file__).resolve().parent.parent
SMALL = {"dataset": "mnist", "num-clients": 3, "labels-per-client": 10, "data-fraction": 0.02, "test-subset": 500,
         "lr": 0.05, "poison-lr": 0.05, "trigger": "pixel-9", "finetune-rounds": 1, "curve-points": 2,
         "defense": "all", "pruning-accuracy": "clients", "round-timeout": 300}
RUN_TIMEOUT = 900


def finish(run: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> str:
    try:
        out, _ = run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.kill()
        out, _ = run.communicate()
        pytest.fail(f"flwr run did not finish within {timeout}s:\n{out[-3000:]}")
    assert run.returncode == 0, out[-3000:]
    return out


def messages_handled(federation: LocalFederation, node: int) -> set[str]:
    log = (federation.workdir / f"supernode-{node}.log").read_text()
    return {line.split("Receiving: ")[1].split(" message")[0] for line in log.splitlines() if "Receiving: " in line}


def assert_every_phase_ran(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["phases"]) == {"training", "fp", "fp-aw", "ft", "all"}
    for name in ("trained", "fp", "fp-aw", "ft", "all"):
        assert (run_dir / "checkpoints" / f"{name}.pt").exists()
    return results


def test_clients_go_to_the_node_of_their_partition_id_or_in_turn(capsys):
    assert assign_clients({11: 2, 12: 0, 13: 1}, 3) == {0: 12, 1: 13, 2: 11}
    assert capsys.readouterr().out == ""
    assert assign_clients({11: 1, 12: 0}, 5) == {0: 12, 1: 11, 2: 12, 3: 11, 4: 12}
    assert "2 SuperNodes for 5 clients" in capsys.readouterr().out
    assert assign_clients({11: 7, 12: 5, 13: 6}, 3) == {0: 12, 1: 13, 2: 11}, "ordered by partition id"
    # started without --node-config: every node reports -1; none may be left out
    assert assign_clients({13: -1, 11: -1, 12: -1}, 3) == {0: 11, 1: 12, 2: 13}
    assert "without distinct partition ids" in capsys.readouterr().out
    assert assign_clients({11: 0, 12: 0, 13: 1}, 3) == {0: 11, 1: 12, 2: 13}, "a repeated id: node-id order"


def test_superlink_and_three_supernodes_run_training_and_every_cleansing_query(data_dir, tmp_path):
    with LocalFederation(tmp_path / "federation", nodes=3) as federation:
        out = finish(federation.submit(ROOT, {**SMALL, "num-rounds": 2, "data-dir": data_dir,
                                              "output-dir": str(tmp_path / "runs"), "run-name": "plain"}))
        handled = [messages_handled(federation, i) for i in range(3)]
    run_dir = tmp_path / "runs" / "plain"
    assert f"results in {run_dir}" in out
    assert_every_phase_ran(run_dir)
    rows = read_csv(run_dir / "metrics.csv")
    rounds = [(r["phase"], int(r["round"]), int(r["replies"])) for r in rows if r["phase"] != "init"]
    assert rounds == [("train", 1, 3), ("train", 2, 3), ("finetune", 3, 3)], "every node answered every round"
    assert not (run_dir / "dropped_replies.csv").exists() or not read_csv(run_dir / "dropped_replies.csv")
    expected = {"query.describe", "train", "evaluate", "query.phase"}  # every phase query is one message type
    for node, types in enumerate(handled):
        assert types == expected, f"SuperNode {node} handled {types}"


def test_tls_with_supernode_authentication_and_a_supernode_that_dies(data_dir, tmp_path):
    certs = make_certificates(tmp_path / "certs")
    with LocalFederation(tmp_path / "federation", nodes=3, tls=certs, authenticate=True) as federation:
        trusting = ssl.create_default_context(cafile=str(certs.ca))
        with socket.create_connection(("127.0.0.1", federation.link_port)) as raw, \
                trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3"), "the SuperLink serves TLS with the generated certificate"
        with socket.create_connection(("127.0.0.1", federation.link_port)) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")

        stranger = federation.add_node("unregistered", "partition-id=3 num-partitions=4", register=False)
        deadline = time.monotonic() + 60
        while True:
            listed = subprocess.run([flower_tool("flwr"), "supernode", "list", "local", "--format", "json"],
                                    env=federation.env, capture_output=True, text=True, timeout=60, check=True)
            nodes = json.loads(listed.stdout)["nodes"]
            if sum(n["status"] == "online" for n in nodes) == 3 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert [n["status"] for n in nodes] == ["online"] * 3, "only the registered SuperNodes are admitted"
        assert stranger.wait(timeout=120) != 0, "the unregistered SuperNode gives up: it was refused"

        out_dir = tmp_path / "runs"
        run = federation.submit(ROOT, {**SMALL, "num-rounds": 3, "data-dir": data_dir, "output-dir": str(out_dir),
                                       "run-name": "tls"})
        metrics = out_dir / "tls" / "metrics.csv"
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (metrics.exists() and any(r["phase"] == "train" for r in read_csv(metrics))):
            assert run.poll() is None and time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.5)
        federation.kill("supernode-2")  # client 2's node crashes after round 1
        out = finish(run)
    run_dir = out_dir / "tls"
    results = assert_every_phase_ran(run_dir)
    rows = [r for r in read_csv(run_dir / "metrics.csv") if r["phase"] != "init"]
    assert [(r["phase"], int(r["round"]), int(r["replies"]), int(r["missing"])) for r in rows] == [
        ("train", 1, 3, 0), ("train", 2, 2, 1), ("train", 3, 2, 1), ("finetune", 4, 2, 1)], out[-3000:]
    lost = read_csv(run_dir / "dropped_replies.csv")
    assert lost and {(d["client"], d["kind"]) for d in lost} == {("2", "missing")}
    assert all(d["reason"].startswith("node unavailable") for d in lost)
    assert {"fp", "fp-aw", "ft", "all"} <= set(results["phases"]), "cleansing went on with the two nodes left"
