"""Refactors keep behaviour: small fixed-seed runs of every mode give the recorded numbers to the last digit.

``tests/fixtures/behaviour.json`` was recorded before the registry refactor (issue 12) with::

    FL_BACKDOOR_RECORD_BEHAVIOUR=1 pytest tests/test_behaviour_unchanged.py

Rerecord only for a change that is meant to alter results, and say so in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.run_dir import read_csv
from server_strategies.simulation import run_simulation

FIXTURE = Path(__file__).parent / "fixtures" / "behaviour.json"
RECORD = os.environ.get("FL_BACKDOOR_RECORD_BEHAVIOUR") == "1"

BASE = {"dataset": "mnist", "num-clients": 4, "labels-per-client": 10, "data-fraction": 0.05, "test-subset": 500,
        "lr": 0.1, "poison-lr": 0.1, "poison-epochs": 2, "gamma": 2, "trigger": "pixel-9", "num-rounds": 3,
        "finetune-rounds": 2, "curve-points": 0, "seed": 3}
MODES = {
    "train-only": {},
    "all-rap": {"defense": "all", "pruning-method": "rap"},
    "all-mvp": {"defense": "all", "pruning-method": "mvp", "pruning-accuracy": "clients"},
    "dba": {"trigger": "dba", "attack-mode": "all-to-one", "num-attackers": 2, "aggregation": "dba",
            "server-lr": 0.5, "gamma": 2, "poison-per-batch": 10, "poison-lr-steps": True, "defense": "fp-aw"},
    "adaptive": {"adaptive-attack": "pruning-aware", "defense": "all", "pruning-method": "mvp"},
    "rank-manipulation": {"adaptive-attack": "rank-manipulation", "defense": "fp", "finetune-attack": "poison"},
}
ROW_KEYS = ("phase", "round", "ta", "aa", "aa_piece0", "aa_piece1", "aa_piece2", "aa_piece3", "clients",
            "attacking", "replies", "train_loss")
RESULT_KEYS = ("ta", "aa", "pruned", "delta", "zeroed", "rounds", "kept_round")


def observed(run_dir: Path) -> dict[str, Any]:
    """What a run computed: every metrics row and every phase's result, timings left out."""
    rows = [{k: r[k] for k in ROW_KEYS if k in r} for r in read_csv(run_dir / "metrics.csv")]
    phases = json.loads((run_dir / "results.json").read_text())["phases"]
    return {"rows": rows, "phases": {name: {k: v for k, v in phase.items() if k in RESULT_KEYS}
                                     for name, phase in phases.items()}}


@pytest.mark.parametrize("mode", list(MODES))
def test_a_fixed_seed_run_gives_the_recorded_numbers(mode, data_dir, tmp_path):
    cfg = ExperimentConfig.from_flat({**BASE, **MODES[mode], "data-dir": data_dir, "output-dir": str(tmp_path)})
    got = observed(run_simulation(cfg))
    recorded = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
    if RECORD:
        recorded[mode] = got
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded")
    assert mode in recorded, f"no recorded numbers for {mode}: record them (module docstring)"
    assert got == recorded[mode]
