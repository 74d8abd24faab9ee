"""End to end: the comparison script on a small backdoored Fashion-MNIST model from real data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from defenses.hasnet import collected_data
from experiments.compare_defenses import CompareOptions, ComparisonRun, comparison_of, main
from fl_backdoor.config import ExperimentConfig, UserError
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import read_csv, save_checkpoint, write_json
from fl_backdoor.sweeps import Experiment, is_finished
from fl_backdoor.training import SGDSettings, train

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"dataset": "fashion-mnist", "data-fraction": 0.03, "num-clients": 3, "labels-per-client": 10,
         "test-subset": 500, "model-widths": "4,8,8", "lr": 0.05, "batch-size": 32}
FAST = ["--anp-iterations", "30", "--anp-batch-size", "32", "--nc-steps", "20", "--nc-batch-size", "32",
        "--ft-epochs", "1", "--hasnet-iterations", "2", "--hasnet-healing-epochs", "1"]


@pytest.fixture(scope="module")
def run_dir(data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as the federated training leaves it: config, trained checkpoint, results."""
    path = tmp_path_factory.mktemp("run")
    cfg = ExperimentConfig.from_flat({**SMALL, "data-dir": data_dir, "output-dir": str(path.parent)})
    torch.manual_seed(0)
    model = build_model(cfg)
    data = collected_data(cfg, torch.device("cpu"))
    train(model, data.x, data.targets, SGDSettings(lr=0.05, epochs=2, batch_size=32), torch.Generator().manual_seed(0))
    write_json(path / "config.json", cfg.to_flat())
    save_checkpoint(path / "checkpoints" / "trained.pt", model.state_dict(), round=3, mask=None, config=cfg.to_flat())
    write_json(path / "results.json", {"phases": {"training": {"ta": 0.8, "aa": 0.9},
                                                  "fp": {"ta": 0.7, "aa": 0.5, "pruned": 3},
                                                  "all": {"ta": 0.75, "aa": 0.1, "zeroed": 4, "delta": 2.0}},
                                       "phase_seconds": {"train": 12.0, "prune": 1.5, "finetune": 2.5, "aw": 1.0}})
    return path


def test_one_table_with_every_defense_and_the_federated_rows(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    rows = main(["--checkpoint", str(run_dir / "checkpoints" / "trained.pt"), "--out", str(out), "--anp-curve",
                 "-c", "test-subset=300", *FAST])
    names = [r["defense"].removesuffix(" (unchanged: guard)") for r in rows]
    assert names[:3] == ["Training (backdoored)", "Federated FP", "Federated All"]
    assert names[3:5] == ["ANP (threshold 0.2)", "ANP (clean drop <= 4 pts)"]
    assert names[5:8] == ["Centralized training, no defense (2 epochs)", "HaS-Net (centralized training)",
                          "Fine-Pruning"]
    assert names[8].startswith("Neural Cleanse") and names[9] == "Fine-tuning"
    fed_all = rows[2]
    assert (fed_all["ta"], fed_all["aa"], fed_all["pruned"], fed_all["seconds"]) == (75.0, 10.0, 3, 5.0)
    assert rows[0]["seconds"] == 12.0
    for r in rows:
        assert 0.0 <= r["ta"] <= 100.0 and 0.0 <= r["aa"] <= 100.0
    assert all(isinstance(rows[i]["pruned"], int) for i in (3, 4, 7))

    table = (out / "table.md").read_text()
    assert table.startswith("| Defense | TA | AA | Neurons pruned | Seconds |") and "| Fine-tuning |" in table
    assert [r["defense"] for r in read_csv(out / "table.csv")] == [r["defense"] for r in rows]
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == rows
    details = saved["details"]
    guarded = {r["defense"].removesuffix(" (unchanged: guard)") for r in rows if r["defense"].endswith("guard)")}
    assert set(details["guard"]) == guarded, "every guarded row says what the method reached"
    for name in guarded:  # 2 HaS-Net iterations on 3% of the data: a worse model than the one it would replace
        assert details["guard"][name]["clean_output"] < details["clean_accuracy"] - 0.05
        assert next(r for r in rows if r["defense"].startswith(name))["ta"] == rows[0]["ta"]
    assert details["clean_samples"] == 600, "1% of the 60000 training images"
    assert sum(details["anp"]["neurons"].values()) == 4 + 8 + 8 + 128
    assert set(details["anp"]["rules"]) == {"threshold 0.2", "clean drop <= 4 pts"}
    assert details["anp"]["rules"]["clean drop <= 4 pts"]["clean_accuracy"] >= details["clean_accuracy"] - 0.04
    assert len(details["neural-cleanse"]["mask_norms"]) == 10
    assert details["hasnet"]["poisoned"] > 0 and len(details["hasnet"]["iterations"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["test-subset"] == 300, "-c overrides apply on top of the run's config"
    assert config["comparison"]["anp_eps"] == 0.4 and config["comparison"]["anp_iterations"] == 30
    assert "torch" in json.loads((out / "versions.json").read_text())
    curve = read_csv(out / "anp_curve.csv")
    assert [float(r["threshold"]) for r in curve][:3] == [0.0, 0.05, 0.1]
    assert [int(r["pruned"]) for r in curve] == sorted(int(r["pruned"]) for r in curve)


def test_bad_input_is_one_error_line(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--defenses"):
        main(["--checkpoint", str(run_dir / "checkpoints" / "trained.pt"), "--defenses", "anp,magic"])
    with pytest.raises(UserError, match="--anp-rules"):
        main(["--checkpoint", str(run_dir / "checkpoints" / "trained.pt"), "--anp-rules", "threshold,vibes"])
    with pytest.raises(UserError, match="--anp-eps"):
        main(["--checkpoint", str(run_dir / "checkpoints" / "trained.pt"), "--anp-eps", "0"])
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare_defenses.py"), "--checkpoint",
                           str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'missing.pt'}"]


def test_in_a_sweep_a_comparison_is_a_run_on_its_parents_model(run_dir: Path, tmp_path: Path) -> None:
    options = CompareOptions(defenses=("fine-tuning",), ft_epochs=1)
    cfg = ExperimentConfig.from_flat({**json.loads((run_dir / "config.json").read_text()), "num-rounds": 0,
                                      "init-checkpoint": str(run_dir / "checkpoints" / "trained.pt"),
                                      "output-dir": str(tmp_path), "run-name": "cmp"})
    out = ComparisonRun(options)(cfg)
    assert out == tmp_path / "cmp" and is_finished(out)
    assert [r["defense"] for r in read_csv(out / "table.csv")] == \
        ["Training (backdoored)", "Federated FP", "Federated All", "Fine-tuning"]
    assert json.loads((out / "config.json").read_text())["comparison"]["defenses"] == ["fine-tuning"]
    with pytest.raises(UserError, match="init-checkpoint"):
        ComparisonRun(options)(cfg.replace(init_checkpoint=""))


def test_a_comparison_is_named_by_its_training_and_every_option() -> None:
    training = Experiment("mnist-9to0-train", {"dataset": "mnist"})
    compared = comparison_of(training, CompareOptions())
    assert compared.parent == training and compared.label.startswith("mnist-9to0-compare-")
    assert compared.name == comparison_of(training, CompareOptions()).name
    assert compared.name != comparison_of(training, CompareOptions(ft_epochs=5)).name
    with pytest.raises(UserError, match="--defenses"):
        CompareOptions(defenses=())
