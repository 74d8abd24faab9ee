"""Federated trigger inversion (server_strategies/phases/inversion.py): the norms' median against liars, the reply
checks, the unlearning batches, exact on hand-made inputs; then the phase through Flower."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from clients.behaviours.inversion_aware import InversionAware
from defenses.neural_cleanse import NCSettings, flagged_classes, reverse_triggers
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.federation_data import validation_set
from fl_backdoor.run_dir import load_checkpoint, read_csv
from server_strategies.phases.inversion import (
    TriggerUnlearning,
    median_norms,
    norms_checker,
    pattern_checker,
)
from server_strategies.reply_checks import InvalidReply
from server_strategies.simulation import run_simulation


def honest_norms(target_norm: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    norms = list(20.0 + rng.uniform(-1.0, 1.0, 10))
    norms[0] = target_norm
    return norms


def test_every_label_takes_the_clients_median_norm():
    replies = [[1.0, 5.0, 9.0], [3.0, 4.0, 8.0], [2.0, 7.0, 7.0]]
    assert median_norms(replies).tolist() == [2.0, 5.0, 8.0]
    with pytest.raises(ValueError, match="at least one client"):
        median_norms([])


def test_a_minority_hiding_the_target_label_does_not_unflag_it():
    honest = [honest_norms(3.0 + i / 10, i) for i in range(5)]
    cfg = ExperimentConfig.from_flat({"attack-label": 0})
    liar = InversionAware(cfg, 0)
    lies = [liar.reply("trigger-norms", {"norms": honest_norms(3.0, 9)})["norms"] for _ in range(2)]
    assert lies[0][0] == max(lies[0]) > 20.0, "the target's norm reported as the largest"
    assert flagged_classes(median_norms(honest), 2.0) == [0]
    combined = median_norms([*honest, *lies])
    assert median_norms(honest)[0] == pytest.approx(3.2)
    assert combined[0] == pytest.approx(3.3), "2 liars of 7 move the median by one honest rank, from 3.2 to 3.3"
    assert flagged_classes(combined, 2.0) == [0]
    blank = liar.reply("trigger-pattern", {"masks": [0.5, 1.0], "patterns": [0.2, 0.3]})
    assert blank == {"masks": [0.0, 0.0], "patterns": [0.2, 0.3]}


def test_the_server_refuses_norms_that_cannot_be_mask_norms():
    check = norms_checker(pixels=784)

    def reply(norms):
        return RecordDict({"metrics": MetricRecord({"norms": norms})})

    assert check(reply([1.0] * 10)) == [1.0] * 10
    for bad, reason in (([1.0] * 9, "expected 10 norms"), ([-1.0] + [1.0] * 9, "outside"),
                        ([785.0] + [1.0] * 9, "outside"), ([float("nan")] + [1.0] * 9, "outside"),
                        ([float("inf")] + [1.0] * 9, "outside")):
        with pytest.raises(InvalidReply, match=reason):
            check(reply(bad))
    pattern = pattern_checker(labels=2, channels=1, pixels=4)
    ok = RecordDict({"metrics": MetricRecord({"masks": [0.5] * 8, "patterns": [1.0] * 8})})
    assert pattern(ok) == ([0.5] * 8, [1.0] * 8)
    for masks, patterns in (([0.5] * 7, [1.0] * 8), ([0.5] * 8, [1.0] * 4), ([1.5] * 8, [1.0] * 8)):
        with pytest.raises(InvalidReply):
            pattern(RecordDict({"metrics": MetricRecord({"masks": masks, "patterns": patterns})}))


def test_unlearning_stamps_the_received_trigger_on_the_first_fifth_of_every_batch_and_keeps_the_labels():
    cfg = ExperimentConfig.from_flat({"inversion-fraction": 0.2})
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1.0
    variant = TriggerUnlearning({"trigger-labels": [3], "trigger-masks": mask.flatten().tolist(),
                                 "trigger-patterns": [0.75] * 4})
    x, y = torch.zeros(10, 1, 2, 2), torch.arange(10)
    stamp = variant.transform(cfg, x)
    assert stamp is not None
    xb, yb = stamp(x.clone(), y.clone())
    assert torch.equal(yb, y), "true labels kept"
    assert xb[:2, 0, 0, 0].tolist() == [0.75, 0.75] and float(xb[2:].abs().sum()) == 0.0
    assert float(xb[:2].sum()) == pytest.approx(1.5), "only the trigger's pixel changes"


def test_a_chosen_label_is_reversed_alone_as_in_the_joint_optimisation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    x, y = torch.rand(40, 1, 4, 4), torch.randint(0, 10, (40,))
    settings = NCSettings(steps=3, batch_size=8)
    every = reverse_triggers(model, x, y, 10, settings, torch.Generator().manual_seed(1))
    three = reverse_triggers(model, x, y, 10, settings, torch.Generator().manual_seed(1), labels=[3])
    assert three.labels == [3] and three.masks.shape == (1, 1, 4, 4) and three.patterns.shape == (1, 1, 4, 4)
    # every label's loss is independent of the others': the same batches give label 3 the same trigger
    assert torch.allclose(three.masks[0], every.masks[3], atol=1e-6)
    assert three.norms[0] == pytest.approx(every.norms[3], abs=1e-4)
    assert torch.allclose(three.stamp(3, x), every.stamp(3, x), atol=1e-6)


def test_the_liar_names_the_queries_as_the_phase_registers_them():
    from clients.behaviours import inversion_aware
    from server_strategies.phases import inversion

    assert (inversion_aware.TRIGGER_NORMS, inversion_aware.TRIGGER_PATTERN) == \
        (inversion.TRIGGER_NORMS, inversion.TRIGGER_PATTERN)


@pytest.mark.slow
def test_trigger_inversion_flags_gathers_the_median_trigger_and_unlearns_through_flower(data_dir, tmp_path):
    small = {"dataset": "mnist", "num-clients": 4, "labels-per-client": 10, "data-fraction": 0.05,
             "test-subset": 300, "lr": 0.05, "poison-lr": 0.05, "trigger": "pixel-9", "num-rounds": 2,
             "curve-points": 0, "data-dir": data_dir, "output-dir": str(tmp_path)}
    trained = run_simulation(ExperimentConfig.from_flat({**small, "run-name": "trained"}))
    start = str(trained / "checkpoints" / "trained.pt")
    # threshold 0: every label with a norm below the median is flagged; the attacker (client 0) lies in both queries
    common = {**small, "num-rounds": 0, "init-checkpoint": start, "finetune-rounds": 1, "finetune-patience": 1}
    runs = {}
    inversion = {"defense": "trigger-inversion", "inversion-steps": 5, "inversion-threshold": 0.0,
                 "adaptive-attack": "inversion-aware"}
    for name, extra in (("trigger-inversion", inversion), ("finetune", {"defense": "finetune"}),
                        ("server", {**inversion, "inversion-unlearning": "server"})):
        runs[name] = run_simulation(ExperimentConfig.from_flat({**common, **extra, "run-name": name}))
    found = json.loads((runs["trigger-inversion"] / "results.json").read_text())["phases"]["trigger-inversion"]
    norms = np.array(found["norms"])
    assert len(norms) == 10 and found["clients"] == 4 == found["pattern_clients"]
    assert found["flagged"] == sorted((i for i in range(10) if norms[i] < np.median(norms)),
                                      key=lambda i: (norms[i], i))
    assert found["true_target"] == 0 and found["rounds"] == 1
    pixels, flagged = 28 * 28, len(found["flagged"])
    from PIL import Image

    with Image.open(runs["trigger-inversion"] / "reversed-trigger.png") as drawn:  # 2 tiles a row, 1 pixel padding
        assert drawn.size == (2 * 29 + 1, flagged * 29 + 1)
    assert 8 * 10 <= found["reply_bytes"]["trigger norms"] <= 8 * 10 + 256
    assert 8 * 2 * flagged * pixels <= found["reply_bytes"]["reversed triggers"] <= 8 * 2 * flagged * pixels + 256
    params = sum(v.numel() for v in load_checkpoint(runs["finetune"] / "checkpoints" / "finetune.pt")["state_dict"]
                 .values())
    assert 4 * params <= found["reply_bytes"]["model update"] <= 4 * params + 4096, "float32 arrays and their keys"
    rows = read_csv(runs["trigger-inversion"] / "metrics.csv")
    assert [r["phase"] for r in rows].count("finetune") == 1
    unlearned = load_checkpoint(runs["trigger-inversion"] / "checkpoints" / "trigger-inversion.pt")["state_dict"]
    plain = load_checkpoint(runs["finetune"] / "checkpoints" / "finetune.pt")["state_dict"]
    assert any(not torch.equal(unlearned[k], plain[k]) for k in plain), "the honest clients stamped their batches"

    on_server = json.loads((runs["server"] / "results.json").read_text())["phases"]["trigger-inversion"]
    assert {k: on_server[k] for k in ("norms", "flagged")} == {k: found[k] for k in ("norms", "flagged")}, \
        "the same detection"
    validation = on_server["budget"]["clean_input"]
    assert on_server["unlearning"] == "server" and on_server["epochs"] == 20
    images = len(validation_set(ExperimentConfig.from_flat(small)).y)
    assert on_server["steps"] == 20 * math.ceil(images / 64), "20 epochs over the validation set, batches of 64"
    assert on_server["budget"]["within"] and on_server["budget"]["unlearned"] == on_server["budget"]["clean_output"]
    assert on_server["budget"]["clean_output"] >= validation - 0.05
    assert "finetune" not in [r["phase"] for r in read_csv(runs["server"] / "metrics.csv")], "no federated round"
    served = load_checkpoint(runs["server"] / "checkpoints" / "trigger-inversion.pt")["state_dict"]
    before = load_checkpoint(start)["state_dict"]
    assert any(not torch.equal(served[k], before[k]) for k in before), "the server unlearned"
