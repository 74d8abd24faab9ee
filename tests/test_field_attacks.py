"""The field's attacks (issue 14): each one's defining arithmetic on hand-made tensors, then through Flower."""

from __future__ import annotations

import pytest
import torch

from clients.behaviours.norm_bounded import project_onto_ball, update_norm
from clients.local_training import run_local_job
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.errors import ConfigError
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import read_csv
from server_strategies.simulation import run_simulation


def test_the_projection_lands_on_the_ball_and_leaves_integers_alone():
    center = {"w": torch.zeros(2), "n": torch.tensor(3)}
    state = {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(7)}
    assert project_onto_ball(state, center, 1.0) == pytest.approx(5.0)
    assert state["w"].tolist() == pytest.approx([0.6, 0.8], rel=2e-6) and int(state["n"]) == 7
    inside = {"w": torch.tensor([0.3, 0.4]), "n": torch.tensor(7)}
    project_onto_ball(inside, center, 1.0)
    assert inside["w"].tolist() == pytest.approx([0.3, 0.4]), "inside the ball nothing moves"


def test_pgd_submits_a_boosted_update_no_longer_than_its_bound(data_dir):
    base = {"data-dir": data_dir, "data-fraction": 0.02, "num-clients": 2, "gamma": 2, "poison-epochs": 1,
            "trigger": "pixel-9"}
    cfg = ExperimentConfig.from_flat(base)
    state = build_model(cfg).state_dict()
    free = run_local_job(cfg, 0, state, 1)
    bound = update_norm(free.state, state) / 10
    pgd = run_local_job(cfg.replace(adaptive_attack="pgd", pgd_norm=bound), 0, state, 1)
    assert pgd.attacked and update_norm(pgd.state, state) == pytest.approx(bound, rel=1e-5)
    # pgd-norm 0: the bound is the norm of the update client 0 would send if it were honest
    honest = run_local_job(cfg.replace(attack_rounds="2"), 0, state, 1)  # round 1 is not an attack round
    assert not honest.attacked
    own = run_local_job(cfg.replace(adaptive_attack="pgd"), 0, state, 1)
    assert update_norm(own.state, state) == pytest.approx(update_norm(honest.state, state), rel=1e-5)
    assert update_norm(own.state, state) < update_norm(free.state, state)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["none", "pgd"])
def test_norm_clipping_catches_the_boosted_attacker_but_not_pgd_under_its_bound(attack, data_dir, tmp_path):
    cfg = ExperimentConfig.from_flat({"dataset": "mnist", "num-clients": 4, "labels-per-client": 10,
                                      "data-fraction": 0.02, "test-subset": 300, "lr": 0.05, "num-rounds": 2,
                                      "curve-points": 0, "trigger": "pixel-9", "gamma": 4,
                                      "aggregation": "norm-clip", "clip-norm": 0.5, "adaptive-attack": attack,
                                      "pgd-norm": 0.5, "data-dir": data_dir, "output-dir": str(tmp_path)})
    rows = [r for r in read_csv(run_simulation(cfg) / "metrics.csv") if r["phase"] == "train"]
    caught = [int(r["flagged_attackers"]) for r in rows]
    assert caught == ([0, 0] if attack == "pgd" else [1, 1])


def test_the_blend_trigger_mixes_seeded_noise_in_with_weight_alpha():
    from fl_backdoor.attacks import test_trigger
    from fl_backdoor.triggers.blend import noise_pattern

    cfg = ExperimentConfig.from_flat({"trigger": "blend", "blend-alpha": 0.25, "blend-seed": 7})
    trigger = test_trigger(cfg)
    pattern = noise_pattern(28, 7)
    assert torch.equal(pattern, noise_pattern(28, 7)) and not torch.equal(pattern, noise_pattern(28, 8))
    images = torch.stack([torch.zeros(1, 28, 28), torch.ones(1, 28, 28)])
    out = trigger.apply(images)
    assert torch.allclose(out[0, 0], 0.25 * pattern) and torch.allclose(out[1, 0], 0.75 + 0.25 * pattern)
    assert torch.equal(images[1], torch.ones(1, 28, 28)), "apply returns a copy"
    with pytest.raises(ConfigError, match="leave trigger-origin empty"):
        ExperimentConfig.from_flat({"trigger": "blend", "trigger-origin": "2,2"})


def test_label_flipping_trains_on_every_label_turned_around(data_dir):
    from clients.behaviours import Job, TrainingPlan, conduct_of
    from clients.behaviours.label_flip import flipped
    from fl_backdoor.federation_data import client_data

    assert flipped(torch.tensor([0, 3, 9])).tolist() == [9, 6, 0]
    cfg = ExperimentConfig.from_flat({"data-dir": data_dir, "data-fraction": 0.02, "num-clients": 2,
                                      "adaptive-attack": "label-flip"})
    x, y = client_data(cfg, 0, torch.device("cpu"))
    conduct = conduct_of(cfg, 0)
    plan = conduct.training(conduct.job(cfg, 0, 1, "train"), TrainingPlan(x, y, None), build_model(cfg), None)
    assert torch.equal(plan.x, x) and torch.equal(plan.y, 9 - y) and plan.transform is None
    honest = conduct.training(Job(cfg, 0, 1, "train", False), TrainingPlan(x, y, None), build_model(cfg), None)
    assert torch.equal(honest.y, y)


def test_alie_is_the_mean_minus_z_standard_deviations():
    import numpy as np
    from scipy.stats import norm

    from server_strategies.byzantine import BYZANTINE
    from server_strategies.byzantine.alie import alie_z

    honest = np.array([[0.0, 0.0], [2.0, 4.0]])  # mean (1, 2), std (1, 2)
    assert alie_z(10, 2) == pytest.approx(norm.ppf(0.6))  # s = floor(10/2 + 1) - 2 = 4, Phi^-1((10 - 4) / 10)
    assert alie_z(10, 6) == alie_z(10, 9) == pytest.approx(norm.ppf(0.9)), "a majority of attackers: s = 1"
    cfg = ExperimentConfig()
    z = norm.ppf(0.6)
    assert BYZANTINE["alie"](honest, 10, 2, cfg).tolist() == pytest.approx([1 - z, 2 - 2 * z])
    assert BYZANTINE["alie"](honest, 10, 2, cfg.replace(alie_z=1.5)).tolist() == pytest.approx([-0.5, -1.0])
    assert BYZANTINE["ipm"](honest, 10, 2, cfg.replace(ipm_epsilon=0.5)).tolist() == pytest.approx([-0.5, -1.0])


def test_minmax_goes_as_far_as_the_honest_spread_allows():
    import numpy as np

    from server_strategies.byzantine import BYZANTINE
    from server_strategies.byzantine.minmax import TAU, minmax_gamma

    # mean (1, 0), p = -std = (-1, 0); the malicious update (1 - g, 0) is 1 + g from (2, 0), and the
    # honest updates are 2 apart, so g = 1
    honest = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert minmax_gamma(honest, np.array([-1.0, 0.0]), 10.0) == pytest.approx(1.0, abs=2 * TAU)
    assert BYZANTINE["minmax"](honest, 5, 1, ExperimentConfig()).tolist() == pytest.approx([0.0, 0.0], abs=4 * TAU)


def test_the_colluders_replies_become_one_malicious_model():
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from server_strategies.byzantine import poison_replies

    def rec(*v: float) -> ArrayRecord:
        return ArrayRecord({"w": Array(np.asarray(v))})

    g, local = rec(0.0, 0.0), [rec(1.0, 1.0), rec(3.0, 1.0), rec(2.0, 4.0)]
    cfg = ExperimentConfig.from_flat({"byzantine-attack": "ipm", "ipm-epsilon": 1.0})
    out = poison_replies(cfg, g, local, [False, True, True])
    assert out[0] is local[0] and out[1]["w"].numpy().tolist() == out[2]["w"].numpy().tolist() == [-2.0, -2.0]
    colluders = poison_replies(cfg.replace(byzantine_knowledge="colluders"), g, local, [False, True, True])
    assert colluders[1]["w"].numpy().tolist() == [-2.5, -2.5], "the mean of the attackers' own updates only"
    alone = poison_replies(cfg.replace(byzantine_knowledge="colluders"), g, local, [False, True, False])
    assert alone == local, "one colluder knows no spread: it submits its honest model"


def test_a_byzantine_model_the_server_would_refuse_is_dropped_like_a_reply():
    """The server builds the attackers' models after the replies' checks, so it checks each built one itself."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from server_strategies.byzantine import byzantine_replies

    def rec(w: float, var: float) -> ArrayRecord:
        return ArrayRecord({"w": Array(np.asarray([w])), "bn.running_var": Array(np.asarray([var]))})

    g = rec(0.0, 1.0)
    valid = [(c, (rec(w, var), 0.5)) for c, (w, var) in enumerate([(1.0, 1.5), (3.0, 2.0), (2.0, 1.0)])]
    refused: list[tuple[int, str]] = []
    cfg = ExperimentConfig.from_flat({"byzantine-attack": "ipm", "ipm-epsilon": 1.0})
    # -1 x the mean update (2.0, 0.5): w -2.0 and variance 1 - 0.5 = 0.5, a valid model
    kept = byzantine_replies(cfg, g, valid, [False, True, True], lambda c, r: refused.append((c, r)))
    assert [c for c, _ in kept] == [0, 1, 2] and not refused
    assert kept[1][1][0]["bn.running_var"].numpy().tolist() == [0.5] and kept[1][1][1] == 0.5
    # at epsilon 4 the variance is 1 - 4 x 0.5 = -1: both attackers' models are refused, the honest reply kept
    kept = byzantine_replies(cfg.replace(ipm_epsilon=4.0), g, valid, [False, True, True],
                             lambda c, r: refused.append((c, r)))
    assert [c for c, _ in kept] == [0] and kept[0][1][0] is valid[0][1][0]
    assert refused == [(c, "Byzantine model: array 'bn.running_var' holds a negative variance (min -1)")
                       for c in (1, 2)]
    assert byzantine_replies(cfg.replace(byzantine_attack="none"), g, valid, [False, True, True],
                             lambda c, r: refused.append((c, r))) is valid


@pytest.mark.parametrize("values", [{"trigger": "blend"}, {"adaptive-attack": "label-flip"},
                                    {"adaptive-attack": "neurotoxin"},
                                    {"dataset": "cifar10", "model": "vgg11", "model-widths": "4,4,6,6,8,8,8,8",
                                     "trigger": "semantic-green", "victim-label": 1, "attack-label": 2},
                                    {"byzantine-attack": "ipm", "ipm-epsilon": 20.0, "num-attackers": 2,
                                     "aggregation": "norm-clip"}],
                         ids=["blend", "label-flip", "neurotoxin", "semantic", "ipm"])
@pytest.mark.slow
def test_an_attack_runs_through_flower(values, data_dir, tmp_path, capfd):
    cfg = ExperimentConfig.from_flat({"dataset": "mnist", "num-clients": 5, "labels-per-client": 10,
                                      "data-fraction": 0.02, "test-subset": 300, "lr": 0.05, "num-rounds": 2,
                                      "curve-points": 0, "poison-epochs": 1, "data-dir": data_dir,
                                      "output-dir": str(tmp_path), **values})
    rows = [r for r in read_csv(run_simulation(cfg) / "metrics.csv") if r["phase"] == "train"]
    assert [int(r["replies"]) for r in rows] == [5, 5] and all(int(r["attacking"]) >= 1 for r in rows)
    if "byzantine-attack" in values:  # the two identical, 20x negated updates stand out of the median clip
        assert [int(r["flagged_attackers"]) for r in rows] == [2, 2]
    if values.get("adaptive-attack") == "neurotoxin":  # round 2 reads round 1's global model from Context.state
        out = capfd.readouterr().out
        assert "client 0, round 1: mask from its clean gradient" in out
        assert "client 0, round 2: mask from the last global update" in out


def test_the_neurotoxin_mask_keeps_the_smallest_share_of_all_coordinates():
    from clients.behaviours.neurotoxin import smallest_mask

    estimate = [torch.tensor([0.5, -0.1]), torch.tensor([[3.0, 0.2], [0.0, -2.0]])]
    masks = smallest_mask(estimate, 0.5)  # the 3 smallest of 6 magnitudes: 0.0, 0.1, 0.2
    assert masks[0].tolist() == [0.0, 1.0] and masks[1].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert smallest_mask([torch.ones(4)], 0.5)[0].tolist() == [1.0, 1.0, 0.0, 0.0], "ties in index order"


def test_neurotoxin_leaves_the_coordinates_the_last_global_update_moved_most(data_dir):
    from clients.behaviours.neurotoxin import smallest_mask

    cfg = ExperimentConfig.from_flat({"data-dir": data_dir, "data-fraction": 0.02, "num-clients": 2, "gamma": 2,
                                      "poison-epochs": 1, "trigger": "pixel-9", "weight-decay": 0.0,
                                      "adaptive-attack": "neurotoxin", "neurotoxin-ratio": 0.5})
    g1 = build_model(cfg).state_dict()
    memory: dict[str, torch.Tensor] = {}
    first = run_local_job(cfg, 0, g1, 1, memory=memory)  # no earlier global model: its clean gradient decides
    moved = [float((first.state[k] != g1[k]).float().mean()) for k in g1]
    assert first.attacked and sum(moved) / len(moved) <= 0.5 + 1e-6
    g2 = first.state
    second = run_local_job(cfg, 0, g2, 2, memory=memory)
    names = [n for n, _ in build_model(cfg).named_parameters()]
    assert set(memory) == {f"neurotoxin/previous-global/{n}" for n in names}
    masks = smallest_mask([g2[n] - g1[n] for n in names], 0.5)
    changed = 0
    for name, allowed in zip(names, masks, strict=True):
        frozen = allowed == 0
        assert torch.equal(second.state[name][frozen], g2[name][frozen]), name
        changed += int((second.state[name][~frozen] != g2[name][~frozen]).sum())
    assert changed > 0.25 * sum(g2[n].numel() for n in names), "it trains the coordinates it kept"


def test_the_semantic_trigger_selects_green_dominated_images_and_adds_no_pixel():
    from fl_backdoor.poisoning import victim_copies
    from fl_backdoor.triggers import trigger_for

    def image(r: float, g: float, b: float) -> torch.Tensor:
        return torch.tensor([r, g, b]).view(3, 1, 1).expand(3, 32, 32).clone()

    trigger = trigger_for("semantic-green", 32, config={"semantic-margin": 0.02})
    x = torch.stack([image(0.2, 0.6, 0.2), image(0.5, 0.5, 0.5), image(0.3, 0.31, 0.3), image(0.1, 0.9, 0.1)])
    assert trigger.semantic and trigger.selects(x).tolist() == [True, False, False, True]
    assert trigger_for("semantic-green", 32, config={"semantic-margin": 0.0}).selects(x).tolist()[2] is True
    assert torch.equal(trigger.apply(x), x)
    y = torch.tensor([1, 1, 1, 3])
    xp, yp = victim_copies(x, y, 1, 2, trigger)
    assert xp is x and yp.tolist() == [2, 1, 1, 3], "green automobiles relabelled in place, nothing added"


def test_the_semantic_attack_is_measured_on_the_green_test_automobiles(data_dir):
    from fl_backdoor.evaluation import Evaluator
    from fl_backdoor.federation_data import test_set

    cfg = ExperimentConfig.from_flat({"dataset": "cifar10", "trigger": "semantic-green", "victim-label": 1,
                                      "attack-label": 2, "data-dir": data_dir})
    evaluator = Evaluator(cfg, test_set(cfg), torch.device("cpu"))
    assert evaluator.sets["aa"].shape[0] == 61, "61 of CIFAR-10's 1,000 test automobiles are green-dominated"
    with pytest.raises(ConfigError, match="needs colour images"):
        ExperimentConfig.from_flat({"trigger": "semantic-green"})
