"""The robust aggregators on hand-made models with known answers, and one through a real Flower simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.run_dir import read_csv
from server_strategies.aggregators import AGGREGATORS, Aggregate, apply_update, detection_counts, flat_updates
from server_strategies.aggregators.flame import flame_admitted
from server_strategies.aggregators.fltrust import root_update, trust_weighted
from server_strategies.simulation import run_simulation


def record(**arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def scalars(*values: float) -> list[ArrayRecord]:
    return [record(w=np.array([v])) for v in values]


def aggregate(name: str, global_arrays: ArrayRecord, local: list[ArrayRecord], **cfg) -> ArrayRecord | Aggregate:
    return AGGREGATORS[name](global_arrays, local, ExperimentConfig.from_flat(cfg))


def test_updates_are_flattened_in_the_global_order_and_integers_rounded_back():
    g = record(w=[1.0, 2.0], n=np.array(4, dtype=np.int64))
    local = [record(n=np.array(5, dtype=np.int64), w=[2.0, 2.0])]
    assert flat_updates(g, local).tolist() == [[1.0, 0.0, 1.0]]
    out = apply_update(g, np.array([0.5, -1.0, 0.6]))
    assert out["w"].numpy().tolist() == [1.5, 1.0] and out["n"].numpy().dtype == np.int64 and int(out["n"].numpy()) == 5


def test_krum_keeps_the_model_closest_to_its_neighbours():
    # n=5, f=1: score = squared distances to the n-f-2 = 2 nearest; 0.1 scores 0.0025+0.01, the lowest
    local = scalars(0.0, 0.1, 0.15, 0.5, 10.0)
    out = aggregate("krum", record(w=[0.0]), local, **{"robust-f": 1})
    assert isinstance(out, Aggregate)
    assert out.arrays["w"].numpy().tolist() == [0.1] and out.factors == (0, 1, 0, 0, 0)


def test_multikrum_averages_the_m_best_scores():
    local = scalars(0.0, 0.1, 0.15, 0.5, 10.0)
    out = aggregate("multikrum", record(w=[0.0]), local, **{"robust-f": 1, "multikrum-select": 3})
    assert isinstance(out, Aggregate)
    assert out.arrays["w"].numpy()[0] == pytest.approx((0.0 + 0.1 + 0.15) / 3) and out.factors == (1, 1, 1, 0, 0)
    default = aggregate("multikrum", record(w=[0.0]), local, **{"robust-f": 1})  # m = n - f = 4
    assert isinstance(default, Aggregate) and default.factors == (1, 1, 1, 1, 0)


def test_bulyan_drops_the_outliers_then_averages_the_values_nearest_the_median():
    # n=7, f=1: Multi-Krum keeps theta=5 (the outliers go), then beta=3 values nearest the median 2
    local = scalars(0.0, 1.0, 2.0, 3.0, 4.0, 100.0, -100.0)
    out = aggregate("bulyan", record(w=[0.0]), local, **{"robust-f": 1})
    assert isinstance(out, Aggregate)
    assert out.arrays["w"].numpy().tolist() == [2.0] and out.factors == (1, 1, 1, 1, 1, 0, 0)
    too_few = aggregate("bulyan", record(w=[7.0]), scalars(0.0, 1.0, 2.0), **{"robust-f": 1})
    assert isinstance(too_few, Aggregate) and too_few.arrays["w"].numpy().tolist() == [7.0], "n < 4f+3: kept"


def test_median_and_trimmed_mean_per_coordinate():
    local = [record(w=[1.0, 10.0]), record(w=[2.0, 30.0]), record(w=[100.0, 20.0])]
    out = aggregate("median", record(w=[1.0, 0.0]), local)
    assert isinstance(out, ArrayRecord) and out["w"].numpy().tolist() == [2.0, 20.0]
    five = scalars(0.0, 1.0, 2.0, 3.0, 100.0)
    trimmed = aggregate("trimmed-mean", record(w=[0.0]), five, **{"trim-fraction": 0.2})
    assert isinstance(trimmed, ArrayRecord) and trimmed["w"].numpy().tolist() == [2.0], "mean of 1, 2, 3"


def test_norm_clipping_scales_each_update_into_the_ball():
    local = [record(w=[3.0, 4.0]), record(w=[0.6, 0.8])]  # norms 5 and 1
    fixed = aggregate("norm-clip", record(w=[0.0, 0.0]), local, **{"clip-norm": 2.0})
    assert isinstance(fixed, Aggregate) and fixed.factors == pytest.approx((0.4, 1.0))
    assert fixed.arrays["w"].numpy() == pytest.approx([(1.2 + 0.6) / 2, (1.6 + 0.8) / 2])
    median = aggregate("norm-clip", record(w=[0.0, 0.0]), local)  # bound = median norm = 3
    assert isinstance(median, Aggregate) and median.factors == pytest.approx((0.6, 1.0))
    assert median.arrays["w"].numpy() == pytest.approx([(1.8 + 0.6) / 2, (2.4 + 0.8) / 2])


def test_flame_excludes_the_odd_direction_and_clips_to_the_median_norm():
    updates = [[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [1.2, 0.0], [-1.0, 5.0]]
    assert flame_admitted(np.array(updates)).tolist() == [True, True, True, True, False]
    out = aggregate("flame", record(w=[0.0, 0.0]), [record(w=u) for u in updates], **{"flame-lambda": 0.0})
    assert isinstance(out, Aggregate)
    median_norm = math.hypot(1.0, 0.1)
    assert out.factors == pytest.approx((1.0, 1.0, 1.0, median_norm / 1.2, 0.0))
    assert out.arrays["w"].numpy() == pytest.approx([(3.0 + median_norm) / 4, 0.0])
    noisy = aggregate("flame", record(w=[0.0, 0.0]), [record(w=u) for u in updates], **{"flame-lambda": 0.1})
    again = aggregate("flame", record(w=[0.0, 0.0]), [record(w=u) for u in updates], **{"flame-lambda": 0.1})
    assert isinstance(noisy, Aggregate) and isinstance(again, Aggregate)
    assert not np.allclose(noisy.arrays["w"].numpy(), out.arrays["w"].numpy()), "noise lambda * S is added"
    assert noisy.arrays["w"].numpy().tolist() == again.arrays["w"].numpy().tolist(), "seeded: resume draws the same"


def test_fltrust_weighs_by_direction_and_rescales_to_the_server_norm():
    root = np.array([2.0, 0.0])
    updates = np.array([[1.0, 0.0],  # cos 1, rescaled to [2, 0]
                        [3.0, 3.0],  # cos 1/sqrt2, rescaled to [sqrt2, sqrt2]
                        [-5.0, 0.0]])  # cos -1: trust 0
    result = trust_weighted(updates, root)
    assert result is not None
    update, trust = result
    s = 1 / math.sqrt(2)
    assert trust == pytest.approx([1.0, s, 0.0])
    assert update == pytest.approx([(2.0 + s * math.sqrt(2)) / (1 + s), (s * math.sqrt(2)) / (1 + s)])
    assert trust_weighted(np.array([[-1.0, 0.0]]), root) is None, "no trust at all: the caller keeps the model"


def test_fltrust_through_the_registry_trains_on_the_root_data(data_dir):
    cfg = ExperimentConfig.from_flat({"dataset": "mnist", "data-fraction": 0.02, "data-dir": data_dir, "lr": 0.05})
    from fl_backdoor.models import build_model

    g = ArrayRecord({k: v.contiguous() for k, v in build_model(cfg).state_dict().items()})
    root = root_update(g, cfg, server_round=1)
    assert np.linalg.norm(root) > 0 and root.tolist() == root_update(g, cfg, server_round=1).tolist(), "seeded"
    along, against = apply_update(g, 0.5 * root), apply_update(g, -root)
    out = AGGREGATORS["fltrust"](g, [along, against], cfg, server_round=1)
    assert isinstance(out, Aggregate) and out.factors == pytest.approx((2.0, 0.0))
    assert flat_updates(g, [out.arrays])[0] == pytest.approx(root, rel=1e-5, abs=1e-6), "rescaled to ||g0||"


def test_detection_counts_true_and_false_positives():
    counts = detection_counts([0, 3, 5, 8], [0.0, 1.0, 0.5, 0.0], attacking=lambda c: c in (0, 3))
    assert counts == {"flagged": 3, "flagged_clients": "0/5/8", "flagged_attackers": 1, "flagged_benign": 2,
                      "attacker_factor": 0.5, "benign_factor": 0.25}


@pytest.mark.parametrize("name", ["krum", "flame", "fltrust"])
def test_a_robust_rule_runs_through_flower_and_reports_what_it_flagged(name, data_dir, tmp_path):
    cfg = ExperimentConfig.from_flat({"dataset": "mnist", "num-clients": 5, "labels-per-client": 10,
                                      "data-fraction": 0.02, "test-subset": 500, "lr": 0.05, "num-rounds": 2,
                                      "curve-points": 0, "trigger": "pixel-9", "aggregation": name,
                                      "data-dir": data_dir, "output-dir": str(tmp_path)})
    rows = [r for r in read_csv(run_simulation(cfg) / "metrics.csv") if r["phase"] == "train"]
    assert len(rows) == 2
    for row in rows:
        flagged = [int(c) for c in row["flagged_clients"].split("/") if c]
        assert int(row["flagged"]) == len(flagged) == int(row["flagged_attackers"]) + int(row["flagged_benign"])
        assert int(row["flagged_attackers"]) == sum(c in cfg.attackers for c in flagged)
        if name == "krum":
            assert len(flagged) == 4, "Krum keeps one model of five"
