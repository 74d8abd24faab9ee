"""All cleansing phases through real Flower simulations on a small real-data subset."""

import json

import pytest
import torch

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.masks import NeuronMask, install_mask
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import load_checkpoint, read_csv
from server_strategies.simulation import run_simulation

SMALL = {"dataset": "mnist", "num-clients": 4, "labels-per-client": 10, "data-fraction": 0.05,
         "test-subset": 1000, "lr": 0.05, "poison-lr": 0.05, "poison-epochs": 3, "gamma": 4,
         "trigger": "pixel-9", "num-rounds": 3, "finetune-rounds": 2, "curve-points": 4}


@pytest.fixture(scope="module")
def all_mode(data_dir, tmp_path_factory):
    cfg = ExperimentConfig.from_flat({**SMALL, "data-dir": data_dir, "defense": "all", "pruning-method": "mvp",
                                      "pruning-accuracy": "clients",
                                      "output-dir": str(tmp_path_factory.mktemp("runs"))})
    return cfg, run_simulation(cfg)


@pytest.mark.slow
def test_all_mode_runs_every_phase_and_reports_it(all_mode):
    cfg, run_dir = all_mode
    results = json.loads((run_dir / "results.json").read_text())
    phases = results["phases"]
    assert set(phases) == {"training", "fp", "fp-aw", "ft", "all"}
    for name in phases:
        assert 0.0 <= phases[name]["ta"] <= 1.0 and 0.0 <= phases[name]["aa"] <= 1.0
    assert cfg.value("pruning-stop") == "per-step", "the paper's per-step rule is the default"
    max_drop = cfg.value("pruning-max-drop")
    assert phases["fp"]["clean_threshold"] == pytest.approx(phases["fp"]["clean_accuracy"] - max_drop)
    assert 1 <= phases["ft"]["rounds"] <= cfg.value("finetune-rounds")
    assert phases["ft"]["kept_round"] == phases["ft"]["rounds"], "fine-tuning hands on its last model by default"
    assert set(results["phase_seconds"]) >= {"train", "prune", "finetune", "aw"}
    rows = read_csv(run_dir / "metrics.csv")
    assert [r["phase"] for r in rows].count("finetune") == phases["ft"]["rounds"]
    assert all(r["attacking"] == "1" for r in rows if r["phase"] == "finetune"), "the attacker takes part"
    table = (run_dir / "results.md").read_text()
    assert "| 9 | 0 |" in table and "FP+AW TA" in table and "All AA" in table
    curve = read_csv(run_dir / "pruning_curve.csv")
    assert {r["method"] for r in curve} == {"rap", "mvp"}
    assert read_csv(run_dir / "aw_curve_all.csv")[0]["delta"] == "none"
    for name in ("trained", "fp", "fp-aw", "ft", "all"):
        assert (run_dir / "checkpoints" / f"{name}.pt").exists()


@pytest.mark.slow
def test_the_mask_is_persistent_and_zeroes_the_pruned_neurons(all_mode):
    cfg, run_dir = all_mode
    results = json.loads((run_dir / "results.json").read_text())
    fp, final = load_checkpoint(run_dir / "checkpoints" / "fp.pt"), load_checkpoint(run_dir / "checkpoints" / "all.pt")
    assert fp["mask"] == final["mask"], "fine-tuning and AW keep the pruning mask"
    tuned = load_checkpoint(run_dir / "checkpoints" / "ft.pt")["state_dict"]
    assert any(not torch.equal(tuned[k], fp["state_dict"][k]) for k in tuned), "fine-tuning changed the model"
    mask = NeuronMask.from_dict(final["mask"])
    assert len(mask.pruned) == results["phases"]["fp"]["pruned"] > 0
    model = install_mask(build_model(cfg), mask)
    model.load_state_dict(final["state_dict"])
    out = {}
    model.get_submodule(model.neuron_outputs[mask.layer]).register_forward_hook(
        lambda m, i, o: out.setdefault("a", o))
    model(torch.rand(8, 1, 28, 28))
    assert torch.all(out["a"][:, list(mask.pruned)] == 0)


def test_aw_zeroed_the_reported_number_of_weights(all_mode):
    cfg, run_dir = all_mode
    results = json.loads((run_dir / "results.json").read_text())["phases"]
    assert results["all"]["delta"] is not None, "AW keeps the Delta that crossed the threshold (Algorithm 1)"
    ft = load_checkpoint(run_dir / "checkpoints" / "ft.pt")["state_dict"]
    final = load_checkpoint(run_dir / "checkpoints" / "all.pt")["state_dict"]
    key = f"{build_model(cfg).last_conv}.weight"
    newly_zero = (final[key] == 0) & (ft[key] != 0)
    assert int(newly_zero.sum()) == results["all"]["zeroed"] > 0
    assert all(torch.equal(final[k], ft[k]) for k in ft if k != key), "AW touches only the last conv layer"


@pytest.mark.slow
@pytest.mark.parametrize("mode, phases", [("aw", {"training", "aw"}), ("fp", {"training", "fp"})])
def test_a_saved_model_is_defended_without_training(all_mode, tmp_path, mode, phases):
    cfg, run_dir = all_mode
    trained = run_dir / "checkpoints" / "trained.pt"
    defended = run_simulation(cfg.replace(init_checkpoint=str(trained), num_rounds=0, defense=mode,
                                          pruning_method="rap", pruning_accuracy="server",
                                          output_dir=str(tmp_path)))
    results = json.loads((defended / "results.json").read_text())["phases"]
    assert set(results) == phases
    original = json.loads((run_dir / "results.json").read_text())["phases"]["training"]
    assert results["training"]["ta"] == pytest.approx(original["ta"])
    assert [r["phase"] for r in read_csv(defended / "metrics.csv")] == ["init"]


@pytest.mark.slow
def test_benign_attackers_during_fine_tuning_do_not_poison(all_mode, tmp_path):
    cfg, run_dir = all_mode
    defended = run_simulation(cfg.replace(init_checkpoint=str(run_dir / "checkpoints" / "trained.pt"), num_rounds=0,
                                          pruning_accuracy="server", finetune_attack="benign", finetune_rounds=1,
                                          curve_points=0, output_dir=str(tmp_path)))
    rows = [r for r in read_csv(defended / "metrics.csv") if r["phase"] == "finetune"]
    assert len(rows) == 1 and rows[0]["attacking"] == "0"
