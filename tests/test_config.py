"""The config schema: coercion, clear errors naming the key, pyproject and the docs in sync, the core reaching
no component package."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fl_backdoor.config import (
    REFERENCE_END,
    REFERENCE_START,
    ConfigError,
    ExperimentConfig,
    builtin_schema,
    config_from_args,
    markdown_reference,
    round_in_spec,
)

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
    cfg = config_from_args(["num-clients=20", "gamma=2.5", "equal-size=false", "attacker-ids='3,4'", "robust-f=2"])
    assert cfg.num_clients == 20 and cfg.gamma == 2.5 and cfg.equal_size is False
    assert cfg.attackers == (3, 4) and cfg.value("robust-f") == 2


def test_a_value_may_hold_spaces_and_one_item_is_one_key():
    assert config_from_args(["run-name=my run", "trigger-origin= 2,3 "]).run_name == "my run"
    with pytest.raises(ConfigError, match=r"^'num-clients=20 gamma=2.5': one key=value per -c \(repeat -c for each "
                                          r"key\)$"):
        config_from_args(["num-clients=20 gamma=2.5"])
    with pytest.raises(ConfigError, match=r"^'num-clients' is not key=value$"):
        config_from_args(["num-clients"])


def test_round_specs():
    assert round_in_spec(7, "all")
    assert not round_in_spec(7, "none")
    assert [r for r in range(1, 12) if round_in_spec(r, "2-3,9,11")] == [2, 3, 9, 11]


def test_pyproject_run_config_is_the_schema():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat = ExperimentConfig().to_flat()
    assert table == {key: flat[key] for key in builtin_schema()}  # a test's own components are not the project's
    ExperimentConfig.from_flat(table)  # the defaults are valid


def test_the_docs_reference_is_generated_from_the_declarations():
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text.split(REFERENCE_START + "\n", 1)[1].split(REFERENCE_END, 1)[0] == markdown_reference()
    assert "| `robust-f` | `1` | an integer >= 0 |" in text
    assert "| `round-timeout` | `3600.0` | a number > 0 |" in text, "infinity is allowed where it means something"
    assert "| `lr` | `0.2` | a finite number > 0 |" in text
    assert "| `robust-f` | aggregation `bulyan` is used | clients per round >= 4 robust-f + 3 (Bulyan's condition) " \
           "| error |" in text


def test_the_core_names_no_component_package():
    """The issue's check: `grep -rn "server_strategies\\|clients\\.\\|defenses\\." fl_backdoor/` finds nothing."""
    pattern = re.compile(r"server_strategies|clients\.|defenses\.")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "fl_backdoor").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_the_choices_are_those_recorded_before_the_settings_moved():
    # printed by the code of 584e469, before the components declared their own keys; since then the batch-norm
    # models fmnist-cnn-bn and mnist-cnn-bn and the phase finetune-sam-server were added (issue 40), the phases anp,
    # anp-server and trigger-inversion and the adaptive attacks anp-aware and inversion-aware (issue 41), the
    # malformed reply negative-variance (a reply check for batch-norm models), and
    # nothing else changed
    printed = subprocess.run([sys.executable, "-m", "fl_backdoor.config", "--choices"], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout
    assert printed == (ROOT / "tests" / "fixtures" / "config_choices.txt").read_text()


def test_every_key_declares_known_roles_and_the_key_lists_derive_from_them():
    from fl_backdoor import sweeps
    from fl_backdoor.config import ROLES
    from fl_backdoor.federation_data import depends_on

    for key, setting in ExperimentConfig.schema().items():
        assert setting.role_names and set(setting.role_names) <= set(ROLES), key
    # the lists that were hand-written before the roles: a run's digest and the data cache depend on them
    def roles(role: str) -> tuple[str, ...]:  # the project's own keys (a test's components left out)
        return tuple(k for k in ExperimentConfig.keys_with_role(role) if k in builtin_schema())

    assert set(roles("placement")) == {"output-dir", "run-name", "resume", "init-checkpoint", "data-dir", "download",
                                          "client-cpus", "client-gpus", "device", "round-timeout", "eval-batch-size",
                                          "plugins"}
    assert set(sweeps.SWEEP_KEYS) == set(roles("sweep")) == {"output-dir", "run-name", "resume", "init-checkpoint"}
    assert set(roles("attack")) == {"attack-label", "trigger", "trigger-origin", "dba-pieces", "poison-per-batch",
                                       "gamma", "poison-lr", "poison-epochs", "poison-lr-steps", "adaptive-attack",
                                       "adaptive-delta", "oracle-checkpoint",
                                       # added with issue 14's attacks
                                       "pgd-norm", "pgd-every", "blend-alpha", "blend-seed", "byzantine-attack",
                                       "byzantine-knowledge", "alie-z", "ipm-epsilon", "minmax-gamma",
                                       "neurotoxin-ratio", "semantic-margin",
                                       # added with the batch-norm reply check (issue 40)
                                       "replacement-statistics"}
    cleansing = [k for k in ExperimentConfig.keys() if k.startswith(("pruning-", "finetune-", "aw-"))]  # noqa: SIM118
    assert set(roles("cleansing")) == {*cleansing, "defense", "mvp-rate", "curve-points", "clean-budget", "ibau-steps",
                                        # added with issue 17's defenses
                                        "sam-rho", "sam-adaptive", "clp-u", "ibau-rounds", "ibau-norm", "ibau-lr",
                                        "rnp-threshold",
                                        # added with issue 41's federated ANP
                                        "anp-iterations", "anp-threshold", "anp-pruning", "anp-aggregation",
                                        "anp-trim", "anp-rounds", "inversion-steps", "inversion-threshold",
                                        "inversion-fraction", "inversion-unlearning"}
    split = {"dataset", "data-dir", "download", "seed", "data-fraction", "validation-fraction"}
    assert set(depends_on("split")) == split
    assert set(depends_on("split", "partition")) == split | {"num-clients", "partition", "labels-per-client",
                                                            "equal-size", "dirichlet-alpha", "attack-mode",
                                                            "victim-label", "num-attackers", "attacker-ids"}
    assert set(depends_on("test-set")) == {"dataset", "data-dir", "download", "test-subset", "seed"}


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
