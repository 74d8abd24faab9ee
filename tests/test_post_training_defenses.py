"""Post-training defenses beyond dormant neurons (CLP, FT-SAM): exact arithmetic, then through Flower."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from defenses.clp import channel_lipschitz, clp_prune, conv_bn_pairs
from defenses.ibau import IBAUSettings, hypergradient, universal_perturbation
from defenses.rnp import RNPSettings, flatten_masks, prune_by_masks, recover_masks, split_masks, unlearn
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import validation_set
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import load_checkpoint, read_csv
from fl_backdoor.training import sharpness_aware_gradients
from server_strategies.simulation import run_simulation


def test_clp_bound_is_the_spectral_norm_of_each_channel_kernel_times_the_batch_norm_scale():
    conv = nn.Conv2d(2, 3, (1, 2), bias=False)
    with torch.no_grad():  # channel k's kernel reshaped to in x (kh kw) is the 2x2 matrix below
        conv.weight.copy_(torch.tensor([[[[3.0, 0.0]], [[0.0, 4.0]]],      # diag(3, 4): sigma_max 4
                                        [[[1.0, 1.0]], [[1.0, 1.0]]],      # all ones: sigma_max 2
                                        [[[0.0, 0.0]], [[0.0, 0.5]]]]))    # one entry: 0.5
    assert channel_lipschitz(conv, None).tolist() == pytest.approx([4.0, 2.0, 0.5])
    bn = nn.BatchNorm2d(3, eps=1.0)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 1.0]))
        bn.running_var.copy_(torch.tensor([3.0, 0.0, 8.0]))  # scales |gamma| / sqrt(var + eps) = 1/2, 2, 1/3
    assert channel_lipschitz(conv, bn).tolist() == pytest.approx([2.0, 4.0, 0.5 / 3])


def test_clp_prunes_channels_above_mean_plus_u_sample_std_and_silences_them():
    def layer(bn: bool) -> nn.Module:
        conv = nn.Conv2d(1, 5, 1)
        conv.load_state_dict({"weight": torch.tensor([1.0, -1.0, 1.0, 1.0, 10.0]).view(5, 1, 1, 1),
                              "bias": torch.full((5,), 0.5)})
        return nn.Sequential(conv, *([nn.BatchNorm2d(5)] if bn else []), nn.ReLU()).eval()

    # bounds 1, 1, 1, 1, 10: mean 2.8, sample std sqrt(16.2) = 4.025; u = 1 -> 6.82 (channel 4), u = 3 -> 14.9
    assert clp_prune(layer(False), 3.0) == {}
    plain = layer(False)
    assert clp_prune(plain, 1.0) == {"0": [4]}
    assert plain[0].weight.flatten().tolist() == [1.0, -1.0, 1.0, 1.0, 0.0] and plain[0].bias[4] == 0
    assert torch.all(plain(torch.rand(2, 1, 3, 3))[:, 4] == 0), "the channel outputs zero"
    with_bn = layer(True)
    assert clp_prune(with_bn, 1.0) == {"0": [4]}
    assert with_bn[1].weight[4] == 0 and with_bn[1].bias[4] == 0 and with_bn[0].weight[4].item() == 10.0
    assert torch.all(with_bn(torch.rand(2, 1, 3, 3))[:, 4] == 0)


def test_every_conv_is_paired_with_the_batch_norm_right_after_it():
    resnet = build_model(ExperimentConfig.from_flat({"dataset": "cifar10", "model": "resnet18-slim"}))
    pairs = {name: bn for name, _, bn in conv_bn_pairs(resnet)}
    assert len(pairs) == 20 and all(bn is not None for bn in pairs.values())  # 17 convs + 3 shortcut convs
    assert pairs["layer2.0.shortcut.0"] is resnet.get_submodule("layer2.0.shortcut.1")
    fashion = build_model(ExperimentConfig.from_flat({"dataset": "fashion-mnist"}))
    assert [(name, bn) for name, _, bn in conv_bn_pairs(fashion)] == [
        ("features.conv1", None), ("features.conv2", None), ("features.conv3", None)]


@pytest.mark.parametrize("adaptive, eps", [(False, [0.3, 0.4]),
                                           (True, [0.5 * 27 / math.sqrt(337), 0.5 * 64 / math.sqrt(337)])])
def test_the_sam_step_takes_the_gradient_at_w_plus_rho_g_over_its_norm(adaptive, eps):
    w = torch.tensor([3.0, 4.0], requires_grad=True)

    def loss():  # 0.5 ||w||^2: the gradient at any point is the point itself
        return 0.5 * (w ** 2).sum()

    loss().backward()
    sharpness_aware_gradients([w], loss, 0.5, adaptive)
    # SAM: eps = rho g / ||g|| = 0.5 (3, 4) / 5; ASAM: eps = rho |w|^2 g / || |w| g || = 0.5 (27, 64) / sqrt(337)
    assert w.grad.tolist() == pytest.approx([3.0 + eps[0], 4.0 + eps[1]], rel=1e-6)
    assert w.tolist() == [3.0, 4.0], "the weights are restored exactly"


@pytest.mark.parametrize("steps, expected", [(5, 1 + 6 * (1 - 0.9 ** 5)), (400, 7.0)])
def test_the_hypergradient_of_a_quadratic_inner_problem(steps, expected):
    # inner: delta* = argmin 0.5 (delta - theta)^2 = theta; outer: delta^2 + theta, so d/dtheta = 2 theta + 1 = 7
    # at theta = 3; K fixed-point steps of Phi = delta - 0.1 (delta - theta) give 1 + 2 delta (1 - 0.9^K)
    theta = torch.tensor(3.0, requires_grad=True)
    loss, (grad,) = hypergradient([theta], torch.tensor(3.0), lambda d: d ** 2 + theta,
                                  lambda d: 0.5 * (d - theta) ** 2, steps, 0.1)
    assert loss == 12.0 and float(grad) == pytest.approx(expected, rel=1e-6)


def test_the_universal_perturbation_stays_inside_its_bound():
    torch.manual_seed(0)
    model = build_model(ExperimentConfig.from_flat({"dataset": "mnist", "model-widths": "4,8"}))
    x = torch.rand(300, 1, 28, 28)
    for norm in (0.5, 3.0):
        delta = universal_perturbation(model, x, IBAUSettings(norm=norm, batch_size=64),
                                       torch.Generator().manual_seed(0))
        assert delta.shape == (1, 1, 28, 28)
        assert 0 < float(torch.linalg.vector_norm(delta)) <= norm * (1 + 1e-6)


def test_rnp_masks_stay_in_zero_one_and_prune_exactly_the_low_channels():
    torch.manual_seed(0)
    model = build_model(ExperimentConfig.from_flat({"dataset": "mnist", "model-widths": "4,8"}))
    x = torch.rand(200, 1, 28, 28)
    y = torch.randint(0, 10, (200,))
    settings = RNPSettings(batch_size=50, unlearning_epochs=3, recovering_epochs=5, recovering_lr=2.0)
    unlearned = unlearn(model, x, y, settings, torch.Generator().manual_seed(0))
    assert 1 <= unlearned.epochs <= 3 and (unlearned.epochs == 3 or unlearned.accuracy <= settings.clean_threshold)
    assert all(a > settings.clean_threshold for a in unlearned.accuracies[:-1]), "checked after every step"
    assert len(unlearned.accuracies) <= 3 * 4, "four steps an epoch at most"
    before, after = model.state_dict(), unlearned.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "unlearning changed the copy"
    masks = recover_masks(unlearned.model, x, y, settings, torch.Generator().manual_seed(0))
    assert set(masks) == {"features.conv1", "features.conv2"}
    values = torch.cat(list(masks.values()))
    assert values.shape == (12,) and float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    assert float(values.min()) < 1.0, "the recovery moved the masks"
    hand = {"features.conv1": torch.tensor([0.9, 0.7, 0.71, 0.0]), "features.conv2": torch.ones(8)}
    bias = model.features.conv1.bias.detach().clone()
    assert prune_by_masks(model, hand, 0.7) == {"features.conv1": [1, 3]}
    zero = model.features.conv1.weight.flatten(1).abs().sum(1) == 0
    assert zero.tolist() == [False, True, False, True] and torch.equal(model.features.conv1.bias, bias)


def test_federated_rnp_masks_travel_as_one_list_and_the_server_checks_them():
    from flwr.app import MetricRecord, RecordDict

    from server_strategies.phases.rnp import rnp_checker
    from server_strategies.reply_checks import InvalidReply

    model = build_model(ExperimentConfig.from_flat({"dataset": "mnist", "model-widths": "2,3"}))
    masks = {"features.conv1": torch.tensor([0.5, 1.0]), "features.conv2": torch.tensor([0.0, 0.25, 0.75])}
    flat = flatten_masks(masks)
    assert flat == [0.5, 1.0, 0.0, 0.25, 0.75]
    back = split_masks(model, flat)
    assert list(back) == list(masks) and all(torch.equal(back[k], masks[k]) for k in masks)
    with pytest.raises(ValueError, match="4 mask values for 5 channels"):
        split_masks(model, flat[:4])

    def reply(**metrics):
        return RecordDict({"metrics": MetricRecord({"masks": flat, "num-examples": 30, "unlearning-epochs": 4,
                                                    "unlearned-accuracy": 0.125, "top-class-share": 0.5,
                                                    "logit-growth": 2.5, **metrics})})
    check = rnp_checker(5)
    assert check(reply()) == (flat, 30, 4, 0.125, 0.5, 2.5)
    for bad, reason in (({"masks": flat[:4]}, "expected 5 masks"), ({"masks": [1.5, *flat[1:]]}, "outside"),
                        ({"masks": [float("nan"), *flat[1:]]}, "outside"), ({"unlearning-epochs": -1}, "count"),
                        ({"unlearned-accuracy": 2.0}, "outside"), ({"num-examples": -3}, "count"),
                        ({"top-class-share": 1.5}, "outside"), ({"logit-growth": float("inf")}, "finite"),
                        ({"logit-growth": -1.0}, "finite")):
        with pytest.raises(InvalidReply, match=reason):
            check(reply(**bad))


@pytest.mark.parametrize("bn", [False, True])
def test_an_rnp_mask_scales_the_channel_weight_and_keeps_its_bias(bn):
    from defenses.rnp import neuron_masks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), *([nn.BatchNorm2d(3)] if bn else [])).eval()
    if bn:
        model[1].load_state_dict({**model[1].state_dict(), "bias": torch.tensor([0.5, -1.0, 2.0]),
                                  "running_mean": torch.tensor([0.1, 0.2, 0.3])})
    x, m = torch.rand(2, 1, 5, 5), torch.tensor([1.0, 0.5, 0.0])
    with neuron_masks(model) as masks:
        with torch.no_grad():
            masks["0"].copy_(m)
        got = model(x)
    scaled = [layer for layer in model]  # the same modules, the scale multiplied by m
    with torch.no_grad():
        scaled[-1].weight.mul_(m.view(-1, *([1] * (scaled[-1].weight.dim() - 1))))
    assert torch.allclose(got, model(x), atol=1e-6)


IBAU_RNP = "ibau-server?,rnp-server?,rnp?,ibau"


@pytest.mark.slow
def test_clp_then_sam_fine_tuning_through_flower(data_dir, tmp_path):
    small = {"dataset": "mnist", "num-clients": 4, "labels-per-client": 10, "data-fraction": 0.05,
             "test-subset": 500, "lr": 0.05, "poison-lr": 0.05, "poison-epochs": 2, "trigger": "pixel-9",
             "num-rounds": 2, "finetune-rounds": 2, "finetune-patience": 2, "curve-points": 0,
             "data-dir": data_dir, "output-dir": str(tmp_path)}
    trained = run_simulation(ExperimentConfig.from_flat({**small, "run-name": "trained"}))
    runs = {}
    # I-BAU with a vanishing learning rate and no attacker: the clients' I-BAU rounds leave the model as it was
    for defense, extra in (("clp,finetune-sam", {}), ("clp,finetune", {}), ("finetune-sam-server", {}),
                           (IBAU_RNP, {"ibau-rounds": 2, "ibau-steps": 1, "ibau-lr": 1e-12, "num-attackers": 0})):
        cfg = ExperimentConfig.from_flat({**small, "defense": defense, "clp-u": 1.0, "num-rounds": 0, **extra,
                                          "init-checkpoint": str(trained / "checkpoints" / "trained.pt"),
                                          "run-name": defense.replace(",", "-").replace("?", "")})
        runs[defense] = run_simulation(cfg)
    results = json.loads((runs["clp,finetune-sam"] / "results.json").read_text())["phases"]
    assert set(results) == {"training", "clp", "clp+finetune-sam"}
    layers = results["clp"]["clp_channels"]
    assert results["clp"]["clp_pruned"] == sum(map(len, layers.values())) > 0
    after_clp = load_checkpoint(runs["clp,finetune-sam"] / "checkpoints" / "clp.pt")["state_dict"]
    for name, channels in layers.items():  # mnist-cnn has no batch norm: the kernels and biases are zeroed
        assert torch.all(after_clp[f"{name}.weight"][channels] == 0)
        assert torch.all(after_clp[f"{name}.bias"][channels] == 0)
    assert results["clp+finetune-sam"]["rounds"] == 2
    rows = read_csv(runs["clp,finetune-sam"] / "metrics.csv")
    assert [r["phase"] for r in rows].count("finetune") == 2
    sam = load_checkpoint(runs["clp,finetune-sam"] / "checkpoints" / "clp+finetune-sam.pt")["state_dict"]
    plain = load_checkpoint(runs["clp,finetune"] / "checkpoints" / "clp+finetune.pt")["state_dict"]
    same_start = load_checkpoint(runs["clp,finetune"] / "checkpoints" / "clp.pt")["state_dict"]
    assert all(torch.equal(after_clp[k], same_start[k]) for k in after_clp), "CLP is deterministic"
    assert any(not torch.equal(sam[k], plain[k]) for k in sam), "the clients took SAM steps"

    server = json.loads((runs["finetune-sam-server"] / "results.json").read_text())["phases"]["finetune-sam-server"]
    n = int(validation_set(cfg).y.shape[0])
    assert (server["epochs"], server["steps"]) == (20, 20 * -(-n // 64)), "the centralized fine-tuning schedule"
    moved = load_checkpoint(runs["finetune-sam-server"] / "checkpoints" / "finetune-sam-server.pt")["state_dict"]
    start = load_checkpoint(trained / "checkpoints" / "trained.pt")["state_dict"]
    assert max(float((moved[k] - start[k]).abs().max()) for k in start) > 1e-3, "the server took SAM steps"
    assert [r["phase"] for r in read_csv(runs["finetune-sam-server"] / "metrics.csv")].count("finetune") == 0

    ibau = json.loads((runs[IBAU_RNP] / "results.json").read_text())["phases"]
    assert set(ibau) == {"training", "ibau-server", "rnp-server", "rnp", "ibau"}
    for rnp in ("rnp-server", "rnp"):
        assert 1 <= ibau[rnp]["unlearning_epochs"] <= 20 and 0.0 <= ibau[rnp]["mask_min"] <= 1.0
        assert ibau[rnp]["rnp_pruned"] == sum(map(len, ibau[rnp]["rnp_channels"].values()))
    assert ibau["rnp"]["clients"] == 4, "every client sent its masks"
    federated = load_checkpoint(runs[IBAU_RNP] / "checkpoints" / "rnp.pt")["state_dict"]
    for name in ("features.conv1", "features.conv2"):  # mnist-cnn: the kernel goes, the bias stays
        channels = ibau["rnp"]["rnp_channels"].get(name, [])
        kept = [c for c in range(start[f"{name}.weight"].shape[0]) if c not in channels]
        assert torch.all(federated[f"{name}.weight"][channels] == 0)
        assert torch.equal(federated[f"{name}.weight"][kept], start[f"{name}.weight"][kept])
        assert torch.equal(federated[f"{name}.bias"], start[f"{name}.bias"])
    assert ibau["ibau-server"]["steps"] == 2 * -(-n // 256), "two rounds over the validation set in batches of 256"
    rows = read_csv(runs[IBAU_RNP] / "metrics.csv")
    assert [r["phase"] for r in rows].count("finetune") == 2 == ibau["ibau"]["rounds"]
    unlearned = load_checkpoint(runs[IBAU_RNP] / "checkpoints" / "ibau.pt")["state_dict"]
    tuned = load_checkpoint(runs["clp,finetune"] / "checkpoints" / "clp+finetune.pt")["state_dict"]
    assert max(float((unlearned[k] - start[k]).abs().max()) for k in start) < 1e-6
    assert max(float((tuned[k] - after_clp[k]).abs().max()) for k in start) > 1e-3, "SGD would have moved it"


def test_ibau_takes_at_least_the_reference_steps_on_a_small_clean_set():
    from server_strategies.phases.ibau import rounds_for

    cfg = ExperimentConfig()
    assert cfg.value("ibau-steps") == 50 and cfg.value("ibau-rounds") == 5
    assert rounds_for(cfg, 600) == 17, "3 batches of 256 a round: 17 rounds for 50 steps, not 5 for 15"
    assert rounds_for(cfg, 2500) == 5, "BackdoorBench's own 5% of CIFAR-10: its 5 rounds of 10 batches"
    assert rounds_for(cfg, 5400) == 5
    assert rounds_for(cfg.replace(ibau_steps=0), 600) == 5


def test_the_port_diagnostics_count_exactly():
    from experiments.diagnose_ports import mask_summary, prediction_shift

    clean, moved = torch.tensor([1, 2, 3, 0, 1]), torch.tensor([1, 4, 4, 4, 0])
    assert prediction_shift(clean, moved, torch.tensor([1, 2, 3, 0, 4]), target=0) == {
        "flip": 0.8, "to_target": 0.25, "top_label": 4, "top_share": 0.6}
    assert mask_summary(torch.tensor([0.0, 0.1, 0.5, 1.0, 1.0])) == {
        "count": 5, "quantiles_0_10_50_90_100": [0.0, 0.04, 0.5, 1.0, 1.0], "zero": 1, "below_0.2": 2, "one": 2}


def test_the_port_diagnostics_refuse_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys

    for args, line in ((["--checkpoint", str(tmp_path / "none.pt")], f"--checkpoint: no file {tmp_path / 'none.pt'}"),
                       (["--checkpoint", __file__, "--lr", "fast"],
                        "--lr: 'fast' is not a comma-separated list of numbers")):
        done = subprocess.run([sys.executable, "experiments/diagnose_ports.py", "ibau", *args], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"error: {line}"], done.stderr
