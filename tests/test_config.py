"""The config schema: coercion, clear errors naming the key, pyproject in sync."""

import tomllib
from pathlib import Path

import pytest

from fl_backdoor.config import ConfigError, ExperimentConfig, config_from_args, markdown_reference, round_in_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("values, key", [
    ({"dataset": "svhn"}, "dataset"),
    ({"model": "alexnet"}, "model"),
    ({"model": "vgg11"}, "model"),  # a CIFAR model on 28x28 Fashion-MNIST
    ({"num-clients": 5, "num-attackers": 6}, "num-attackers"),
    ({"num-clients": 5, "attacker-ids": "1,5"}, "attacker-ids"),
    ({"victim-label": 10}, "victim-label"),
    ({"attack-label": -1}, "attack-label"),
    ({"trigger-origin": "26,26", "trigger": "pixel-9"}, "trigger-origin"),
    ({"trigger": "dba", "trigger-origin": "0,20"}, "trigger-origin"),
    ({"gamma": 11}, "gamma"),
    ({"gamma": 0.5}, "gamma"),
    ({"labels-per-client": 11}, "labels-per-client"),
    ({"attack-rounds": "5-2"}, "attack-rounds"),
    ({"num-attackers": 2, "attack-rounds": "1/2/3"}, "attack-rounds"),
    ({"fraction": 0}, "fraction"),
    ({"num-rounds": "ten"}, "num-rounds"),
    ({"equal-size": "maybe"}, "equal-size"),
    ({"no-such-key": 1}, "no-such-key"),
])
def test_invalid_values_name_their_key(values, key):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat(values)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_strings_are_coerced():
    cfg = config_from_args(["num-clients=20 gamma=2.5 equal-size=false attacker-ids='3,4'"])
    assert cfg.num_clients == 20 and cfg.gamma == 2.5 and cfg.equal_size is False
    assert cfg.attackers == (3, 4)


def test_round_specs():
    assert round_in_spec(7, "all")
    assert not round_in_spec(7, "none")
    assert [r for r in range(1, 12) if round_in_spec(r, "2-3,9,11")] == [2, 3, 9, 11]


def test_pyproject_run_config_is_the_schema():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == ExperimentConfig().to_flat()
    ExperimentConfig.from_flat(table)  # the defaults are valid


def test_readme_documents_every_key():
    assert markdown_reference() in (ROOT / "README.md").read_text()


def test_every_key_declares_known_roles_and_the_key_lists_derive_from_them():
    import dataclasses

    from fl_backdoor import federation_data, sweeps
    from fl_backdoor.config import ROLES

    for f in dataclasses.fields(ExperimentConfig):
        assert f.metadata["roles"] and set(f.metadata["roles"]) <= set(ROLES), f.name
    # the lists that were hand-written before the roles: a run's digest and the data cache depend on them
    assert set(sweeps.PLACEMENT_KEYS) == {"output-dir", "run-name", "resume", "init-checkpoint", "data-dir", "download",
                                          "client-cpus", "client-gpus", "device", "round-timeout", "eval-batch-size",
                                          "plugins"}
    assert set(sweeps.SWEEP_KEYS) == {"output-dir", "run-name", "resume", "init-checkpoint"}
    assert set(sweeps.ATTACK_KEYS) == {"attack-label", "trigger", "trigger-origin", "dba-pieces", "poison-per-batch",
                                       "gamma", "poison-lr", "poison-epochs", "poison-lr-steps", "adaptive-attack",
                                       "adaptive-delta", "oracle-checkpoint",
                                       # added with issue 14's attacks
                                       "pgd-norm", "pgd-every", "blend-alpha", "blend-seed", "byzantine-attack",
                                       "byzantine-knowledge", "alie-z", "ipm-epsilon", "minmax-gamma",
                                       "neurotoxin-ratio", "semantic-margin"}
    cleansing = [k for k in ExperimentConfig.keys() if k.startswith(("pruning-", "finetune-", "aw-"))]  # noqa: SIM118
    assert set(sweeps.DEFENSE_KEYS) == {*cleansing, "defense", "mvp-rate", "curve-points",
                                        # added with issue 17's defenses
                                        "sam-rho", "sam-adaptive", "clp-u", "ibau-rounds", "ibau-norm", "ibau-lr",
                                        "rnp-threshold"}
    split = {"dataset", "data-dir", "download", "seed", "data-fraction", "validation-fraction"}
    assert set(federation_data._SPLIT_KEYS) == split
    assert set(federation_data._PARTITION_KEYS) == split | {"num-clients", "partition", "labels-per-client",
                                                            "equal-size", "dirichlet-alpha", "attack-mode",
                                                            "victim-label", "num-attackers", "attacker-ids"}
    assert set(federation_data._TEST_KEYS) == {"dataset", "data-dir", "download", "test-subset", "seed"}


def test_a_new_key_changes_no_run_name():
    from fl_backdoor.sweeps import Experiment

    # recorded before the plugins key existed: sweep runs keep their directories
    assert Experiment("x", {"dataset": "mnist", "num-rounds": 2}).name == "x-" + RECORDED_DIGEST
    assert Experiment("x", {"dataset": "mnist", "num-rounds": 2, "robust-f": 1}).name == "x-" + RECORDED_DIGEST
    changed = Experiment("x", {"dataset": "mnist", "num-rounds": 2, "robust-f": 2}).name
    assert changed != "x-" + RECORDED_DIGEST, "a key added later counts once it is set away from its default"


RECORDED_DIGEST = "2b1a1fdf4d"  # fl_backdoor.sweeps at 8625bd7, before issue 12


def test_registered_choices_are_the_registries_names():
    from fl_backdoor.config import registered_choices

    choices = registered_choices()
    assert {"model", "trigger", "aggregation", "adaptive-attack", "malformed-reply"} <= set(choices)
    assert {"mnist-cnn", "fmnist-cnn", "vgg11"} <= set(choices["model"])
    assert choices["adaptive-attack"][0] == "none" and "rank-manipulation" in choices["adaptive-attack"]
    assert "crash" in choices["malformed-reply"] and "rank-manipulation" not in choices["malformed-reply"]


def test_an_unknown_key_gets_the_nearest_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'num-client' \(did you mean 'num-clients'\?\)"):
        ExperimentConfig.from_flat({"num-client": 3})
    with pytest.raises(ConfigError, match="lists every key"):
        ExperimentConfig.from_flat({"zzzz": 1})


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ".", "/tmp/x"])
def test_a_run_name_cannot_leave_output_dir(name):
    with pytest.raises(ConfigError, match="run-name"):
        ExperimentConfig.from_flat({"run-name": name})
