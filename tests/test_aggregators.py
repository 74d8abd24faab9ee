"""The robust aggregators on hand-made models with known answers, and one through a real Flower simulation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.errors import ConfigError
from fl_backdoor.run_dir import read_csv
from server_strategies.aggregators import AGGREGATORS, Aggregate, apply_update, detection_counts, flat_updates
from server_strategies.aggregators.dp_fixed_clip import epsilon_after
from server_strategies.aggregators.flame import flame_admitted
from server_strategies.aggregators.fltrust import root_update, trust_weighted
from server_strategies.aggregators.foolsgold import foolsgold_weights
from server_strategies.simulation import run_simulation


def record(**arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def scalars(*values: float) -> list[ArrayRecord]:
    return [record(w=np.array([v])) for v in values]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


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


def test_dp_fixed_clipping_clips_each_update_then_adds_noise_z_c_over_m():
    # updates (3, 4) (norm 5) and (0.3, 0.4) (norm 0.5), C = 1: clipped (0.6, 0.8) and (0.3, 0.4)
    g = record(w=[0.0, 0.0])
    cfg = {"num-clients": 2, "dp-clip-norm": 1.0, "dp-noise-multiplier": 1e-9}
    out = aggregate("dp-fixed-clip", g, [record(w=[3.0, 4.0]), record(w=[0.3, 0.4])], **cfg)
    assert isinstance(out, Aggregate) and out.factors == pytest.approx((0.2, 1.0))
    assert out.arrays["w"].numpy() == pytest.approx([0.45, 0.6], abs=1e-6)
    # the noise: sigma = z * C / m per parameter (Flower's compute_stdv), m = clients per round
    big = record(w=np.zeros(200_000))
    noisy = aggregate("dp-fixed-clip", big, [big, big], **{**cfg, "dp-noise-multiplier": 0.5, "dp-clip-norm": 2.0})
    assert isinstance(noisy, Aggregate)
    assert noisy.arrays["w"].numpy().astype(np.float64).std() == pytest.approx(0.5 * 2.0 / 2, rel=0.01)
    again = aggregate("dp-fixed-clip", big, [big, big], **{**cfg, "dp-noise-multiplier": 0.5, "dp-clip-norm": 2.0})
    assert isinstance(again, Aggregate)
    assert np.array_equal(again.arrays["w"].numpy(), noisy.arrays["w"].numpy()), "seeded: a resume repeats it"


@pytest.mark.parametrize("rounds", [1, 10, 100])
def test_dp_epsilon_is_the_gaussian_mechanisms_rdp_composed_over_the_rounds(rounds):
    # RDP of one Gaussian release at order a is a / (2 z^2) (Mironov 2017); T releases add up;
    # eps = min_a T a / (2 z^2) + log((a-1)/a) - (log delta + log a) / (a-1) (Canonne et al. 2020)
    z, delta = 1.0, 1e-5
    by_hand = min(rounds * a / (2 * z**2) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
                  for a in np.arange(1.001, 100.0, 0.001))
    # Flower's accountant minimises over a grid of orders, so it can only be a little above
    assert by_hand <= epsilon_after(rounds, z, 10, 100, delta) <= by_hand * 1.001


def test_foolsgold_weights_alike_histories_down_and_pardons():
    # cos(a, b) = 0.5, c orthogonal to both: alpha = 1 - 0.5 for a and b, 1 for c; /max; 1 -> 0.99;
    # logit ln(0.5/0.5) + 0.5 = 0.5 for a and b, ln(0.99/0.01) + 0.5 > 1 -> 1 for c
    alike = np.array([[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, 1.0]])
    assert foolsgold_weights(alike).tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert foolsgold_weights(alike, confidence=1.5).tolist() == pytest.approx([0.75, 0.75, 1.0]), "kappa scales"
    assert foolsgold_weights(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).tolist() == [0.0, 0.0, 1.0], "sybils"
    # cos(a, b) = 0.6, cos(b, c) = 0.8, cos(a, c) = 0: v = (0.6, 0.8, 0.8); a is pardoned, cs_ab = 0.6 * 0.6 / 0.8,
    # so alpha = (0.55, 0.2, 0.2) -> (1, 0.36, 0.36) -> logit (1, 0, 0); without pardoning (1, 0.5, 0.5) -> (1, .5, .5)
    assert foolsgold_weights(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])).tolist() == [1.0, 0.0, 0.0]


def test_foolsgold_compares_the_histories_not_the_round():
    g, memory = record(w=[0.0, 0.0]), {}
    fg = AGGREGATORS["foolsgold"]
    cfg = ExperimentConfig.from_flat({"num-clients": 3})
    first = fg(g, [record(w=[1.0, 0.0]), record(w=[1.0, 0.0]), record(w=[0.0, 1.0])], cfg, clients=[0, 1, 2],
               memory=memory)
    assert first.factors == (0.0, 0.0, 1.0) and first.arrays["w"].numpy() == pytest.approx([0.0, 1 / 3])
    # alone, three identical updates weigh 0 each; with the histories (1,1), (1,1), (0,2) client 2 stands apart
    same = [record(w=[0.0, 1.0])] * 3
    second = fg(g, same, cfg, clients=[0, 1, 2], memory=memory)
    assert [memory[f"foolsgold/{c}"].tolist() for c in range(3)] == [[1.0, 1.0], [1.0, 1.0], [0.0, 2.0]]
    assert second.factors == (0.0, 0.0, 1.0)
    assert fg(g, same, cfg, clients=[0, 1, 2], memory={}).factors == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="foolsgold-features=output"):
        fg(record(w=np.zeros(2**26)), same[:1], cfg.replace(num_clients=5), clients=[0], memory={})


def test_foolsgold_output_features_are_the_last_weight_matrix_only():
    g = record(w1=np.zeros((2, 3)), b1=np.zeros(3), w2=np.zeros((2, 2)), b2=np.zeros(2))
    local = [record(w1=np.full((2, 3), i), b1=np.full(3, i), w2=np.arange(4.0).reshape(2, 2) * (i + 1),
                    b2=np.full(2, 9.0)) for i in range(2)]
    memory: dict = {}
    cfg = ExperimentConfig.from_flat({"num-clients": 2, "foolsgold-features": "output"})
    AGGREGATORS["foolsgold"](g, local, cfg, clients=[4, 7], memory=memory)
    assert {k: v.tolist() for k, v in memory.items()} == {"foolsgold/4": [0.0, 1.0, 2.0, 3.0],
                                                          "foolsgold/7": [0.0, 2.0, 4.0, 6.0]}


@pytest.mark.slow
def test_foolsgold_histories_survive_a_continuation_from_the_checkpoint(data_dir, tmp_path):
    import torch

    values = {"dataset": "mnist", "num-clients": 3, "labels-per-client": 10, "data-fraction": 0.02,
              "test-subset": 300, "lr": 0.05, "curve-points": 0, "trigger": "pixel-9", "aggregation": "foolsgold",
              "foolsgold-features": "output", "data-dir": data_dir}

    def run(name: str, rounds: int, **more) -> Path:
        cfg = ExperimentConfig.from_flat({**values, "num-rounds": rounds, "output-dir": str(tmp_path / name),
                                          **more})
        return run_simulation(cfg)

    def memory(run_dir: Path) -> dict:
        return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["aggregator_memory"]

    straight = run("straight", 3)
    first = run("first", 2)
    continued = run("continued", 1, **{"init-checkpoint": str(first / "checkpoints" / "latest.pt")})
    assert sorted(memory(first)) == ["foolsgold/0", "foolsgold/1", "foolsgold/2"]
    assert all(torch.equal(memory(straight)[k], memory(continued)[k]) for k in memory(straight))
    assert not torch.equal(memory(first)["foolsgold/0"], memory(continued)["foolsgold/0"]), "round 3 was added"
    last = [r for r in read_csv(straight / "metrics.csv") if r["round"] == "3"]
    assert comparable(last) == comparable(read_csv(continued / "metrics.csv")[1:])


def test_detection_counts_true_and_false_positives():
    counts = detection_counts([0, 3, 5, 8], [0.0, 1.0, 0.5, 0.0], attacking=lambda c: c in (0, 3))
    assert counts == {"flagged": 3, "flagged_clients": "0/5/8", "flagged_attackers": 1, "flagged_benign": 2,
                      "attacker_factor": 0.5, "benign_factor": 0.25}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["krum", "flame", "fltrust", "dp-fixed-clip"])
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
    if name == "dp-fixed-clip":
        z = cfg.value("dp-noise-multiplier")
        assert [float(r["epsilon"]) for r in rows] == [round(epsilon_after(t, z, 5, 5, 1e-5), 4) for t in (1, 2)]
