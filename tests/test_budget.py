"""No defense hands back a destroyed model: the clean-accuracy budget, on hand-made models and through Flower."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from defenses.budget import Budget, strongest_within
from defenses.clp import clp_within_budget
from defenses.ibau import IBAUSettings, ibau_unlearn
from defenses.rnp import RNPSettings, clean_accuracy, precondition, prune_within_budget, rnp, thresholds_from
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.run_dir import load_checkpoint
from server_strategies.cleansing import Cleansing
from server_strategies.phases import PHASES
from server_strategies.simulation import run_simulation

HERE = str(Path(__file__).resolve())


def test_the_strongest_candidate_within_the_budget_is_kept_and_the_model_otherwise():
    budget = Budget(0.9, 0.05)
    assert budget.floor == pytest.approx(0.85) and budget.allows(0.85) and not budget.allows(0.849)
    accuracies = {0.7: 0.5, 0.65: 0.8, 0.6: 0.86, 0.55: 0.9}
    assert strongest_within([0.7, 0.65, 0.6, 0.55], accuracies.__getitem__, budget) == (
        0.6, [(0.7, 0.5), (0.65, 0.8), (0.6, 0.86)]), "nothing after the chosen one is measured"
    assert strongest_within([0.7, 0.65], accuracies.__getitem__, budget) == (None, [(0.7, 0.5), (0.65, 0.8)])
    assert budget.record(0.8) == {"clean_input": 0.9, "clean_output": 0.8, "budget": 0.05, "within": False}
    assert thresholds_from(0.2) == [0.2, 0.15, 0.1, 0.05, 0.0]
    assert thresholds_from(0.12) == [0.12, 0.1, 0.05, 0.0]


def two_class_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Channel k of the conv carries class k alone: logits (relu(x0 - x1), relu(x1 - x0) + 0.1) on 1x1x2 images
    whose pixels differ by at least 0.5, so without either channel half the images go to the other class."""
    conv = nn.Conv2d(1, 2, (1, 2))
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0]]], [[[-1.0, 1.0]]]]))
        assert conv.bias is not None
        conv.bias.zero_()
        fc.weight.copy_(torch.eye(2))
        fc.bias.copy_(torch.tensor([0.0, 0.1]))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc)
    gap = torch.tensor([0.5, 1.0, 1.5, 2.0]).repeat(5)
    sign = torch.tensor([1.0, -1.0]).repeat_interleave(10)
    x = torch.stack([gap * sign, torch.zeros(20)], dim=1).view(20, 1, 1, 2)
    y = (sign < 0).long()
    return model, x, y


def test_a_centralized_defense_below_the_budget_hands_back_the_unchanged_model():
    """The comparison's guard (experiments/compare_defenses.py): a defended model whose clean accuracy fell by more
    than the budget is replaced by the input model in the table; what the method reached is recorded."""
    import copy

    from experiments.compare_defenses import Comparison

    model, x, y = two_class_net()
    comparison = Comparison.__new__(Comparison)
    comparison.x, comparison.y, comparison.details = x, y, {"guard": {}}
    comparison.budget = Budget(1.0, 0.05)
    comparison.fresh = lambda: copy.deepcopy(model)
    comparison.evaluate = lambda m: {"ta": float((m(x).argmax(1) == y).float().mean()), "aa": 0.25}
    kept = comparison.guarded("Fine-tuning", copy.deepcopy(model), "", 1.0)
    assert kept == {"defense": "Fine-tuning", "ta": 100.0, "aa": 25.0, "pruned": "", "seconds": 1.0}
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[0].weight[0].zero_()  # class 0's channel: every image goes to class 1
    assert comparison.guarded("ANP (threshold 0.2)", broken, 1, 2.0) == {
        "defense": "ANP (threshold 0.2) (unchanged: guard)", "ta": 100.0, "aa": 25.0, "pruned": 0, "seconds": 2.0}
    assert comparison.details["guard"] == {"ANP (threshold 0.2)": {
        "clean_input": 1.0, "clean_output": 0.5, "budget": 0.05, "within": False,
        "method": {"ta": 0.5, "aa": 0.25}}}


def test_rnp_prunes_nothing_when_every_threshold_costs_more_than_the_budget():
    model, x, y = two_class_net()
    assert clean_accuracy(model, x, y, 100) == 1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    budget = Budget(1.0, 0.05)
    # channel 0's mask is exactly 0: every threshold down to 0 prunes it, and each costs half the images
    used, pruned, seen = prune_within_budget(model, {"0": torch.tensor([0.0, 0.3])}, 0.7,
                                             lambda m: clean_accuracy(m, x, y, 100), budget)
    assert used is None and pruned == {}
    assert [t for t, _ in seen] == thresholds_from(0.7) and all(a == 0.5 for _, a in seen[-6:])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the model is left as it was"
    # a mask above 0: the thresholds below it prune nothing, and the strongest of those is the one kept
    used, pruned, _ = prune_within_budget(model, {"0": torch.tensor([0.12, 0.3])}, 0.7,
                                          lambda m: clean_accuracy(m, x, y, 100), budget)
    assert used == 0.1 and pruned == {}


def collapsing_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A batch-norm-free net that separates three classes perfectly; gradient ascent makes it one-class."""
    torch.manual_seed(0)
    x = torch.randn(90, 1, 4, 4)
    y = torch.arange(90) % 3
    x[:, 0, 0, :3] += 3.0 * nn.functional.one_hot(y, 3).float()
    model = nn.Sequential(nn.Conv2d(1, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(200):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model, x, y


def test_rnp_whose_unlearning_collapses_says_so_and_changes_nothing():
    model, x, y = collapsing_net()
    assert clean_accuracy(model, x, y, 100) == 1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = rnp(model, x, y, RNPSettings(batch_size=30, unlearning_lr=0.5, recovering_epochs=3),
                torch.Generator().manual_seed(0), budget=0.05)
    assert found["top_class_share"] == 1.0 and found["logit_growth"] > 10
    assert found["unchanged"] == precondition(1.0, 0.0)
    assert "one class" in str(found["unchanged"]) and found["rnp_pruned"] == 0 and found["threshold_used"] is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # three classes: one-class accuracy 1/3 never reaches the stop rule's 0.2, so the unlearning ran every epoch
    assert found["unlearning_epochs"] == 20
    assert precondition(0.5, 11.0) is not None and precondition(0.5, 9.0) is None


def test_rnp_stops_unlearning_after_the_first_step_that_reaches_the_threshold():
    model, x, y = collapsing_net()
    y = (y + 1) % 3  # a model that is wrong everywhere: the first step already leaves it at <= 0.2
    found = rnp(model, x, y, RNPSettings(batch_size=30, recovering_epochs=1), torch.Generator().manual_seed(0),
                budget=1.0)
    assert found["unlearning_steps"] == 1 and found["unlearning_epochs"] == 1
    assert float(found["unlearned_accuracy"]) <= 0.2


def test_clp_leaves_the_model_when_its_outlier_channel_is_essential():
    model, x, y = two_class_net()
    conv = model[0]
    assert isinstance(conv, nn.Conv2d)
    wide = nn.Conv2d(1, 6, (1, 2))  # four useless channels beside the two that classify, one of them large
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:2] = conv.weight * torch.tensor([20.0, 1.0]).view(2, 1, 1, 1)
        wide.weight[2:] = 0.01 * torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)
        wide.bias.zero_()
    fc = nn.Linear(6, 2)
    with torch.no_grad():
        fc.weight.zero_()
        fc.weight[0, 0], fc.weight[1, 1] = 1.0 / 20.0, 1.0
        fc.bias.copy_(torch.tensor([0.0, 0.1]))
    net = nn.Sequential(wide, nn.ReLU(), nn.Flatten(), fc)
    assert clean_accuracy(net, x, y, 100) == 1.0
    used, pruned, seen = clp_within_budget(net, 1.0, lambda m: clean_accuracy(m, x, y, 100), Budget(1.0, 0.05))
    assert used is None and pruned == {} and seen and all(a == 0.5 for _, a in seen)
    assert clean_accuracy(net, x, y, 100) == 1.0
    used, pruned, _ = clp_within_budget(net, 1.0, lambda m: clean_accuracy(m, x, y, 100), Budget(1.0, 0.5))
    assert used == 1.0 and pruned == {"0": [0]}, "a budget of half the accuracy lets CLP prune the outlier"


def test_an_ibau_round_that_leaves_the_budget_is_undone_and_ends_the_unlearning():
    model, x, y = collapsing_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = ibau_unlearn(model, x, y, IBAUSettings(rounds=3, batch_size=30, lr=0.1), torch.Generator().manual_seed(0),
                         keep=lambda m: False)
    assert stats.num_steps == 0 and stats.num_examples == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    kept = ibau_unlearn(model, x, y, IBAUSettings(rounds=3, batch_size=30, lr=1e-4),
                        torch.Generator().manual_seed(0), keep=lambda m: True)
    assert kept.num_steps == 9 and kept.num_examples == 3 * 90


@PHASES.register("toy-wreck")
def wreck(ctx: Cleansing, result: str) -> None:
    """A phase that destroys the model: every classifier weight and bias set to zero."""
    with torch.no_grad():
        for name, parameter in ctx.run.global_model.model.named_parameters():
            if name.startswith("classifier"):
                parameter.zero_()
    ctx.finish(result, note="zeroed the classifier")


@pytest.mark.slow
def test_a_defense_that_destroys_the_model_hands_back_the_trained_one(data_dir, tmp_path):
    cfg = ExperimentConfig.from_flat({"dataset": "mnist", "num-clients": 3, "labels-per-client": 10,
                                      "data-fraction": 0.05, "test-subset": 300, "lr": 0.1, "num-rounds": 3,
                                      "num-attackers": 0, "curve-points": 0, "plugins": HERE,
                                      "defense": "clp,toy-wreck", "data-dir": data_dir, "output-dir": str(tmp_path)})
    run_dir = run_simulation(cfg)
    phases = json.loads((run_dir / "results.json").read_text())["phases"]
    guard = phases["clp+toy-wreck"]["guard"]
    assert guard["reverted"] is True and guard["within"] is False and guard["budget"] == 0.05
    assert "more than clean-budget 0.05 below the trained model's" in guard["reason"]
    assert guard["method_ta"] == pytest.approx(0.1, abs=0.05), "the wrecked model, recorded beside the verdict"
    assert phases["clp+toy-wreck"]["ta"] == phases["training"]["ta"], "the trained model is what is handed back"
    latest = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["state_dict"]
    trained = load_checkpoint(run_dir / "checkpoints" / "trained.pt")["state_dict"]
    assert all(torch.equal(latest[k], trained[k]) for k in trained)
