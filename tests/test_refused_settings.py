"""Settings that cannot work are refused before anything runs; combinations that act only sometimes warn once.

Each row is a case of the hostile-input audit (issue 43), run through the command line as a user
types it: the exact first line it prints, its exit status, and that nothing was written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.run import main
from fl_backdoor.cli import run_cli
from fl_backdoor.config import ConfigError, ExperimentConfig
from fl_backdoor.run_dir import RunDirectory
from fl_backdoor.settings import Rule, Setting

INFINITE = ["clip-norm", "pgd-norm", "flame-lambda", "dp-clip-norm", "dp-noise-multiplier", "ipm-epsilon", "alie-z",
            "foolsgold-confidence", "aw-delta", "lr"]
ERRORS = [
    *[([f"{key}=inf"], f"error: {key}: must be a finite number, got inf") for key in INFINITE],
    (["aggregation=krum", "robust-f=9"],
     "error: robust-f: 9 assumed malicious of 10 clients per round: Krum needs n > 2f + 2 (here at least 21 clients)"),
    (["num-clients=4", "aggregation=bulyan", "robust-f=5"],
     "error: robust-f: 5 assumed malicious of 4 clients per round: Bulyan needs n >= 4f + 3 (here at least 23 "
     "clients)"),
    (["num-clients=4", "aggregation=multikrum", "robust-f=0", "multikrum-select=10"],
     "error: multikrum-select: 10 models to average, but only 4 clients per round"),
    (["num-clients=4", "aggregation=multikrum", "multikrum-select=10"],  # f = 1 of 4: Krum's own bound first
     "error: robust-f: 1 assumed malicious of 4 clients per round: Krum needs n > 2f + 2 (here at least 5 clients)"),
    (["num-clients=4", "min-replies=20"],
     "error: min-replies: 20 valid replies needed, but only 4 clients take part in a round: every round would be "
     "skipped"),
    (["num-clients=4", "aggregation=trimmed-mean"],
     "error: trim-fraction: 0.2 of 4 clients per round trims no value at either end, so trimmed-mean would be the "
     "plain mean: use trim-fraction >= 1/4"),
    (["num-clients=2", "aggregation=flame"],
     "error: num-clients: 2 clients per round: FLAME's clustering needs at least 3 models, it would only clip"),
    (["defense=finetune", "finetune-rounds=0"],
     "error: finetune-rounds: 0 rounds with defense 'finetune': fine-tuning would run no round"),
    (["defense=all", "finetune-rounds=0"],
     "error: finetune-rounds: 0 rounds with defense 'all': fine-tuning would run no round"),
    (["byzantine-attack=alie", "adaptive-attack=neurotoxin"],
     "error: adaptive-attack: 'neurotoxin' with byzantine-attack 'alie': the attackers train honestly and the server "
     "submits the Byzantine update in their place, so the adaptive attack never acts; choose one of the two"),
    (["num-attackers=-1"], "error: num-attackers: must be >= 0, got -1"),
    (["defense=prune,,aw"], "error: defense: 'prune,,aw' has an empty phase (a comma too many)"),
    (["defense=aw??"], "error: defense: 'aw??' is not a phase, nor a probe written 'phase?'"),
    (["num-clients=4 gamma=2"], "error: 'num-clients=4 gamma=2': one key=value per -c (repeat -c for each key)"),
    (["lr=nan"], "error: lr: must be a number, got nan"),
    (["malformed-reply=hang", "round-timeout=inf"],
     "error: round-timeout: inf with malformed-reply 'hang': the server would wait for the hanging client forever"),
    (["malformed-reply=negative-variance"],
     "error: malformed-reply: 'negative-variance' with model 'fmnist-cnn', which has no batch norm to break"),
]
WARNINGS = [
    (["byzantine-attack=alie", "num-attackers=0"],
     "warning: num-attackers: byzantine-attack 'alie' with no attackers (num-attackers 0, attacker-ids empty) never "
     "acts"),
    (["adaptive-attack=neurotoxin", "num-attackers=0"],
     "warning: num-attackers: adaptive-attack 'neurotoxin' with no attackers (num-attackers 0, attacker-ids empty) "
     "never acts"),
    (["attack-rounds=50-60", "num-rounds=1"],
     "warning: attack-rounds: '50-60' gives no attacker a round among this run's rounds 1..1"),
    (["byzantine-attack=alie", "adaptive-attack=rank-manipulation"],
     "warning: adaptive-attack: 'rank-manipulation' with byzantine-attack 'alie': the attackers train honestly and the "
     "server submits the Byzantine update in their place, so the adaptive attack acts only in the cleansing queries"),
]


def command(settings: list[str], out: Path, *flags: str) -> int:
    """Run experiments/run.py with these -c settings as a user would; its exit status."""
    argv = [*flags, *[a for s in settings for a in ("-c", s)], "-c", f"output-dir={out}"]
    try:
        run_cli(lambda: main(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("settings, first_line", ERRORS, ids=[" ".join(s) for s, _ in ERRORS])
def test_a_setting_that_cannot_work_is_one_error_line_and_writes_nothing(settings, first_line, tmp_path, capsys):
    out = tmp_path / "runs"
    code = command(settings, out)  # without --check: it would train if the settings passed
    printed = capsys.readouterr()
    assert code == 2
    assert printed.err.splitlines() == [first_line]
    assert printed.out == "" and not out.exists()


@pytest.mark.parametrize("settings, first_line", WARNINGS, ids=[" ".join(s) for s, _ in WARNINGS])
def test_a_combination_that_acts_only_sometimes_warns_once(settings, first_line, tmp_path, capsys):
    out = tmp_path / "runs"
    code = command(settings, out, "--check")
    printed = capsys.readouterr()
    assert code == 0
    assert printed.out.splitlines() == [first_line, "settings are valid"]
    assert not out.exists()


def test_values_with_spaces_and_an_unbounded_timeout_are_accepted(tmp_path, capsys):
    code = command(["run-name=my run", "round-timeout=inf"], tmp_path / "runs", "--check")
    assert code == 0 and capsys.readouterr().out == "settings are valid\n"


def test_attack_rounds_are_not_judged_against_a_checkpoint_s_numbering():
    # rounds continue the checkpoint's numbering: rounds 50-60 may well be reached
    cfg = ExperimentConfig.from_flat({"attack-rounds": "50-60", "num-rounds": 1, "init-checkpoint": "x.pt"})
    assert cfg.warnings() == []
    # a clean pretraining's 'none' is meant: no warning
    assert ExperimentConfig.from_flat({"attack-rounds": "none", "num-rounds": 3}).warnings() == []
    one = ExperimentConfig.from_flat({"num-attackers": 2, "attack-rounds": "1/9", "num-rounds": 3})
    assert one.warnings() == ["attack-rounds: '1/9' gives attacker(s) [1] a round among this run's rounds 1..3"]


def test_the_preconditions_hold_at_their_bounds():
    ok = ExperimentConfig.from_flat
    assert ok({"num-clients": 5, "aggregation": "krum", "robust-f": 1}).value("robust-f") == 1  # 5 > 2*1 + 2
    with pytest.raises(ConfigError, match=r"^robust-f: 1 assumed malicious of 4 clients per round"):
        ok({"num-clients": 4, "aggregation": "krum", "robust-f": 1})
    assert ok({"num-clients": 7, "aggregation": "bulyan", "robust-f": 1}).aggregation == "bulyan"  # 7 >= 4 + 3
    with pytest.raises(ConfigError, match=r"^robust-f: 1 assumed malicious of 6 clients"):
        ok({"num-clients": 6, "aggregation": "bulyan", "robust-f": 1})
    assert ok({"num-clients": 5, "aggregation": "trimmed-mean", "trim-fraction": 0.2}).num_clients == 5  # int(1.0)
    # the precondition is on the clients of a round, not the federation
    with pytest.raises(ConfigError, match=r"^robust-f: 1 assumed malicious of 4 clients per round"):
        ok({"num-clients": 20, "fraction": 0.2, "aggregation": "krum"})
    assert ok({"num-clients": 20, "fraction": 0.2, "min-replies": 4}).min_replies == 4
    # a rule of a component that is not picked does not apply
    assert ok({"num-clients": 2, "robust-f": 9, "trim-fraction": 0.0}).aggregation == "paper"


def test_a_setting_checks_its_range_and_finiteness_exactly():
    share = Setting("x-share", 0.5, "a share", "federation", low=0.0, high=1.0, low_open=True)
    assert [share.problem(v) for v in (0.0, 1e-9, 1.0, 1.1)] == [
        "x-share: must be in (0, 1], got 0.0", None, None, "x-share: must be in (0, 1], got 1.1"]
    assert share.problem(math.inf) == "x-share: must be a finite number, got inf"
    assert share.problem(math.nan) == "x-share: must be a number, got nan"
    timeout = Setting("x-timeout", 5.0, "seconds", "placement", low=0.0, low_open=True, infinite=True)
    assert timeout.problem(math.inf) is None and timeout.problem(-math.inf) == "x-timeout: must be > 0, got -inf"
    count = Setting("x-count", 3, "a count", "federation", low=1, high=10)
    assert (count.problem(0), count.problem(10), count.range_text()) == ("x-count: must be in 1..10, got 0", None,
                                                                         "in 1..10")
    assert count.coerce("7") == 7 and count.allowed() == "an integer in 1..10"
    assert share.allowed() == "a finite number in (0, 1]" and timeout.allowed() == "a number > 0"
    kind = Setting("x-kind", "a", "a kind", "federation", choices=("a", "b"))
    assert kind.problem("c") == "x-kind: 'c' is not one of a, b" and kind.allowed() == "one of `a`, `b`"
    with pytest.raises(ConfigError, match=r"^x-count: expected an integer, got 'seven'$"):
        count.coerce("seven")


def test_a_rule_names_its_key_and_says_why():
    rule = Rule("x-count", "x-count <= num-clients", lambda cfg: None if cfg.num_clients >= 4 else "too many")
    assert rule.message(ExperimentConfig.from_flat({"num-clients": 4})) is None
    assert rule.message(ExperimentConfig.from_flat({"num-clients": 3})) == "x-count: too many"


def test_a_resumed_run_keeps_the_config_it_started_with(tmp_path):
    start = ExperimentConfig.from_flat({"output-dir": str(tmp_path), "run-name": "r", "init-checkpoint": "m.pt"})
    RunDirectory.create(start).release()
    again = ExperimentConfig.from_flat({"output-dir": str(tmp_path), "run-name": "r", "resume": True})
    RunDirectory.create(again).release()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["init-checkpoint"] == "m.pt" and saved["resume"] is False
    resumes = json.loads((tmp_path / "r" / "resumes.json").read_text())
    assert len(resumes) == 1 and "torch" in resumes[0]
