"""DBA on CIFAR-10 at tiny scale, through both stages and the whole cleansing defense."""

import json

import pytest

from experiments.dba_cifar import main
from fl_backdoor.run_dir import read_csv

pytestmark = pytest.mark.slow  # the slow tier: pytest -m slow


def test_tiny_cifar_dba_with_cleansing_runs_end_to_end(data_dir, tmp_path, capsys):
    main(["--clients", "8", "--per-round", "4", "--pretrain-rounds", "1", "--attack-stage-rounds", "10",
          "--subset", "0.02", "--test-subset", "200", "-c", "model-widths=4,4,6,6", "-c", "defense=all",
          "-c", "finetune-rounds=2", "-c", "curve-points=0", "-c", f"data-dir={data_dir}",
          "-c", f"output-dir={tmp_path}"])
    attack = tmp_path / "dba-cifar-attack"
    assert f"attack stage: {attack}" in capsys.readouterr().out
    rows = read_csv(attack / "metrics.csv")
    shots = [int(r["round"]) for r in rows if r["phase"] == "train" and r["attacking"] == "1"]
    assert shots == [4, 6, 8, 10], "the four single shots, pretraining + 3, 5, 7, 9"
    assert all(f"aa_piece{k}" in rows[-1] for k in range(4))
    finetune = [r for r in rows if r["phase"] == "finetune"]
    assert finetune and all(r["attacking"] == "4" for r in finetune), "all four attackers take part in fine-tuning"
    phases = json.loads((attack / "results.json").read_text())["phases"]
    assert {"training", "fp", "fp-aw", "ft", "all"} <= set(phases)
    clean = json.loads((tmp_path / "dba-cifar-pretrain" / "results.json").read_text())["phases"]
    assert set(clean) == {"training"}, "the defense is for the attacked model only"
