"""Each kind of component is one file: this test file registers its own and runs them through Flower.

The components below are registered here and nowhere else, with their own settings and rules, and
a federated phase with its own client query; the simulation's client processes import this file
through the config key ``plugins``.  No other file of the project names any of them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from torch import nn

from clients.behaviours import BEHAVIOURS, Behaviour, Job, State
from clients.jobs import QUERIES, Request
from clients.local_training import client_model, run_local_job
from defenses.neuron_ranking import mean_activations
from fl_backdoor.config import ConfigError, ExperimentConfig
from fl_backdoor.federation_data import client_data, client_partitions
from fl_backdoor.models import MODELS, build_model
from fl_backdoor.run_dir import load_checkpoint
from fl_backdoor.settings import Rule, Setting
from fl_backdoor.training import pick_device
from fl_backdoor.triggers import TRIGGERS, Trigger, trigger_for
from server_strategies.aggregators import AGGREGATORS
from server_strategies.cleansing import Cleansing, bounded_mean
from server_strategies.phases import PHASES, defense_steps
from server_strategies.reply_checks import InvalidReply, metrics_of, num_examples
from server_strategies.simulation import run_simulation

HERE = str(Path(__file__).resolve())


@BEHAVIOURS.register("toy-flip", role="adaptive")
class FlipUpdate(Behaviour):
    """Submits G - (L - G): the opposite of what it learned."""

    def submit(self, job: Job, global_state: State, local: State) -> State:
        return {k: 2 * g - local[k] if g.is_floating_point() else local[k] for k, g in global_state.items()}


SHRINK = Setting("toy-shrink", 1.0, "toy-median: share of the median model's update applied.", "federation",
                 low=0.0, high=1.0, low_open=True)


@AGGREGATORS.register("toy-median", settings=(SHRINK,), rules=(
    Rule("num-clients", "clients per round >= 3", lambda cfg: None if cfg.clients_per_round >= 3 else
         f"toy-median needs 3 clients per round, got {cfg.clients_per_round}"),))
def median(global_arrays: ArrayRecord, local: list[ArrayRecord], cfg: ExperimentConfig) -> ArrayRecord:
    """G + toy-shrink x (the coordinate-wise median of the clients' models - G)."""
    shrink = SHRINK.of(cfg)
    out = {}
    for name, g in global_arrays.items():
        middle = np.median([r[name].numpy() for r in local], axis=0)
        out[name] = Array((g.numpy() + shrink * (middle - g.numpy())).astype(g.numpy().dtype))
    return ArrayRecord(out)


MEAN_ACTIVATION = "toy-mean-activation"
FLOOR = Setting("toy-activation-floor", 0.0, "toy-activation: mean activations below this are reported as 0.",
                "cleansing", low=0.0)


@QUERIES.register(MEAN_ACTIVATION)
def mean_activation(req: Request) -> dict[str, Any]:
    """The client's side: the mean activation of the pruned layer's neurons on its data, and its example count."""
    model = client_model(req.cfg, req.state, req.mask)
    x, y = client_data(req.cfg, req.client_id, pick_device(req.cfg.device))
    mean = float(mean_activations(model, str(req.config["layer"]), x, req.cfg.eval_batch_size).mean())
    return {"mean": mean if mean >= FLOOR.of(req.cfg) else 0.0, "num-examples": int(y.shape[0])}


def mean_checker(content: RecordDict) -> tuple[float, int]:
    """A reply: one finite, non-negative mean (after a ReLU) and an example count."""
    metrics = metrics_of(content)
    mean = metrics.get("mean")
    if not isinstance(mean, float) or not math.isfinite(mean) or mean < 0:
        raise InvalidReply(f"mean {mean!r} is not a non-negative number")
    return mean, num_examples(metrics)


@PHASES.register("toy-activation", settings=(FLOOR,))
def report_activation(ctx: Cleansing, result: str) -> None:
    """Ask every client for the layer's mean activation; record their mean weighted by example count."""
    replies = ctx.query_clients(MEAN_ACTIVATION, {"layer": ctx.layer}, mean_checker, "mean activations")
    mean = float(ctx.weighted_mean([(c, [m], n) for c, (m, n) in replies])[0])
    ctx.finish(result, mean_activation=mean, clients=len(replies), note=f"mean activation of {ctx.layer}: {mean:.4f}")


@PHASES.register("toy-zero-bias")
def zero_last_bias(ctx: Cleansing, result: str) -> None:
    """Zero the bias of the pruned layer."""
    with torch.no_grad():
        layer = ctx.run.global_model.model.get_submodule(ctx.layer)
        assert isinstance(layer, nn.Conv2d) and layer.bias is not None
        layer.bias.zero_()
    ctx.finish(result, note=f"zeroed the bias of {ctx.layer}")


class Blend(Trigger):
    """Mixes a checkerboard into the whole image: x' = (1 - alpha) x + alpha * pattern."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def apply_(self, images: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(images.shape[-2])[:, None]
        cols = torch.arange(images.shape[-1])[None, :]
        pattern = ((rows + cols) % 2).to(images.dtype)
        images.mul_(1 - self.alpha).add_(self.alpha * pattern)
        return images


@TRIGGERS.register("toy-blend")
def blend(image_size: int, origin: tuple[int, ...], piece: int | None) -> Trigger:
    """A blended trigger (alpha 0.2)."""
    return Blend(0.2)


class TinyNet(nn.Module):
    """One conv layer and a linear classifier."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 5, stride=3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(width * 8 * 8, 10)
        self.last_conv = "conv"
        self.neuron_outputs = {"conv": "relu"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


@MODELS.register("toy-net", channels=1, size=28, widths=1)
def tiny_net(widths: tuple[int, ...]) -> nn.Module:
    """TinyNet, 6 channels by default."""
    return TinyNet(*(widths or (6,)))


CONFIG = {"dataset": "mnist", "num-clients": 3, "labels-per-client": 10, "data-fraction": 0.02, "test-subset": 300,
          "lr": 0.05, "poison-epochs": 1, "num-rounds": 1, "curve-points": 0, "seed": 5, "plugins": HERE,
          "model": "toy-net", "trigger": "toy-blend", "adaptive-attack": "toy-flip", "aggregation": "toy-median",
          "toy-shrink": 0.5, "defense": "prune,toy-zero-bias,toy-activation"}


def test_registered_components_are_config_choices():
    cfg = ExperimentConfig.from_flat(CONFIG)
    assert [s.result for s in defense_steps(cfg.defense)] == ["fp", "prune+toy-zero-bias",
                                                              "prune+toy-zero-bias+toy-activation"]
    assert isinstance(build_model(cfg), TinyNet)
    with pytest.raises(ConfigError, match="did you mean 'toy-median'"):
        ExperimentConfig.from_flat({**CONFIG, "aggregation": "toy-medain"})


def test_a_component_s_settings_and_rules_are_the_config_s():
    cfg = ExperimentConfig.from_flat(CONFIG)
    assert SHRINK.of(cfg) == 0.5 and cfg.value("toy-activation-floor") == 0.0
    assert ExperimentConfig.from_flat({**CONFIG, "toy-shrink": "0.25"}).value("toy-shrink") == 0.25
    with pytest.raises(ConfigError, match=r"^toy-shrink: must be in \(0, 1\], got 2.0$"):
        ExperimentConfig.from_flat({**CONFIG, "toy-shrink": 2})
    with pytest.raises(ConfigError, match=r"^num-clients: toy-median needs 3 clients per round, got 2$"):
        ExperimentConfig.from_flat({**CONFIG, "num-clients": 2})
    # the rule is toy-median's: with another aggregation two clients are fine
    assert ExperimentConfig.from_flat({**CONFIG, "num-clients": 2, "aggregation": "paper"}).num_clients == 2
    # keys added by a plugin leave every run's identity alone while at their defaults
    assert ExperimentConfig.added_defaults()["toy-shrink"] == 1.0


def test_a_plugin_s_keys_at_their_defaults_stay_out_of_configs_that_do_not_load_it():
    """This process has the toy components loaded; a run that does not list them in ``plugins`` sends its
    config to processes that have not: it must read there."""
    import subprocess
    import sys

    plain = ExperimentConfig.from_flat({"dataset": "mnist"}).to_flat()
    assert "toy-shrink" not in plain and "toy-activation-floor" not in plain
    assert ExperimentConfig.from_flat(CONFIG).to_flat()["toy-shrink"] == 0.5, "a key set away from its default stays"
    read = subprocess.run([sys.executable, "-c", "import json, sys; from fl_backdoor.config import ExperimentConfig; "
                           "print(ExperimentConfig.from_flat(json.loads(sys.argv[1])).dataset)", json.dumps(plain)],
                          capture_output=True, text=True, check=True)
    assert read.stdout == "mnist\n"


def test_the_blend_trigger_mixes_the_pattern_in():
    images = torch.full((2, 1, 4, 4), 0.5)
    out = trigger_for("toy-blend", 4).apply(images)
    assert torch.equal(images, torch.full((2, 1, 4, 4), 0.5)), "apply copies"
    assert out[0, 0, 0, 0].item() == pytest.approx(0.4) and out[0, 0, 0, 1].item() == pytest.approx(0.6)


@pytest.mark.slow
def test_toy_attack_aggregator_phase_and_trigger_run_through_flower(data_dir, tmp_path):
    cfg = ExperimentConfig.from_flat({**CONFIG, "data-dir": data_dir, "output-dir": str(tmp_path)})
    run_dir = run_simulation(cfg)

    # round 1 recomputed outside Flower: each client's job (the attacker's flipped), then the median;
    # on one torch thread, as in the client processes, so that the sums are the same
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)
        start = build_model(cfg).state_dict()
        states = [run_local_job(cfg, c, start, 1).state for c in range(3)]
        poisoned_only = run_local_job(cfg.replace(adaptive_attack="none"), 0, start, 1).state
    finally:
        torch.set_num_threads(threads)
    expected = median(ArrayRecord(start), [ArrayRecord(dict(s)) for s in states], cfg).to_torch_state_dict()
    trained = load_checkpoint(run_dir / "checkpoints" / "trained.pt")["state_dict"]
    assert all(torch.equal(trained[k], expected[k]) for k in expected)
    halfway = 0.5 * (median(ArrayRecord(start), [ArrayRecord(dict(s)) for s in states],
                            cfg.replace(toy_shrink=1.0)).to_torch_state_dict()["fc.weight"] + start["fc.weight"])
    assert torch.allclose(trained["fc.weight"], halfway, atol=1e-6), "toy-shrink 0.5 took half the median's step"
    flipped = 2 * start["fc.weight"] - poisoned_only["fc.weight"]
    assert torch.allclose(states[0]["fc.weight"], flipped, atol=1e-6), "the attacker's update was flipped"

    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["phases"]) == {"training", "fp", "prune+toy-zero-bias", "prune+toy-zero-bias+toy-activation"}
    final = load_checkpoint(run_dir / "checkpoints" / "prune+toy-zero-bias.pt")
    assert torch.count_nonzero(final["state_dict"]["conv.bias"]) == 0
    assert final["mask"] == load_checkpoint(run_dir / "checkpoints" / "fp.pt")["mask"]
    assert set(results["phase_seconds"]) >= {"train", "prune", "toy-zero-bias", "toy-activation"}

    # the toy phase's query, answered through Flower by every client, recomputed here on the same model
    from fl_backdoor.masks import NeuronMask

    mask = NeuronMask.from_dict(final["mask"])
    torch.set_num_threads(1)
    try:
        means = [float(mean_activations(client_model(cfg, final["state_dict"], mask), "conv",
                                        client_data(cfg, c, torch.device("cpu"))[0], cfg.eval_batch_size).mean())
                 for c in range(3)]
    finally:
        torch.set_num_threads(threads)
    sizes = [len(p) for p in client_partitions(cfg)]
    expected_mean = bounded_mean([(c, [m], sizes[c]) for c, m in enumerate(means)], sizes)[0]
    reported = results["phases"]["prune+toy-zero-bias+toy-activation"]
    assert reported["clients"] == 3
    assert reported["mean_activation"] == pytest.approx(expected_mean, rel=1e-6)
