"""Federated ANP (server_strategies/phases/anp.py): mask aggregation against liars, the reply check, the candidates
and the pruning within the budget, exact on hand-made inputs; then both phases through Flower."""

import json

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from defenses.anp import (
    anp_accuracies,
    flatten_masks,
    neuron_units,
    prune_first,
    smallest_first,
    split_masks,
)
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.run_dir import load_checkpoint
from fl_backdoor.training import accuracy
from server_strategies.phases.anp import aggregate_masks, candidate_counts, masks_checker, median_drop_accuracies
from server_strategies.reply_checks import InvalidReply
from server_strategies.simulation import run_simulation
from tests.test_anp import three_neuron_net

HONEST = [[0.1, 0.9, 1.0], [0.2, 0.8, 1.0], [0.3, 0.7, 0.9], [0.0, 1.0, 1.0]]


def test_the_median_of_the_clients_masks_per_neuron():
    assert aggregate_masks(HONEST, "median").tolist() == pytest.approx([0.15, 0.85, 1.0])
    assert aggregate_masks(HONEST[:3], "median").tolist() == pytest.approx([0.2, 0.8, 1.0])


def test_the_trimmed_mean_cuts_whole_clients_from_each_end():
    # 4 clients, trim 0.25: one value cut from each end of every coordinate
    assert aggregate_masks(HONEST, "trimmed-mean", 0.25).tolist() == pytest.approx([0.15, 0.85, 1.0])
    # trim 0.2 of 4 clients rounds down to none: the plain mean, every client counted once
    assert aggregate_masks(HONEST, "trimmed-mean", 0.2).tolist() == pytest.approx([0.15, 0.85, 0.975])


@pytest.mark.parametrize("lie", [0.0, 1.0])
def test_a_minority_of_liars_cannot_move_a_mask_outside_the_honest_clients_range(lie):
    honest = [[0.1, 0.9, 1.0], [0.2, 0.8, 1.0], [0.3, 0.7, 0.9], [0.15, 0.85, 0.95], [0.25, 0.75, 0.95]]
    hostile = [*honest, *[[lie] * 3] * 2]  # 2 of 7 report one extreme for every neuron
    low, high = np.min(honest, axis=0), np.max(honest, axis=0)
    for rule, trim in (("median", 0.0), ("trimmed-mean", 2 / 7)):
        combined = aggregate_masks(hostile, rule, trim)
        assert np.all(combined >= low - 1e-12) and np.all(combined <= high + 1e-12), rule
    # the median of 7 is the 4th value: the liars push it one honest rank, no further
    expected = [0.15, 0.75, 0.95] if lie == 0.0 else [0.25, 0.85, 1.0]
    assert aggregate_masks(hostile, "median").tolist() == pytest.approx(expected)


def test_no_replies_or_an_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="at least one client"):
        aggregate_masks([], "median")
    with pytest.raises(ValueError, match="unknown rule 'mean'"):
        aggregate_masks(HONEST, "mean")


def test_the_server_refuses_a_reply_with_the_wrong_count_or_a_mask_outside_zero_one():
    check = masks_checker(3)

    def reply(masks):
        return RecordDict({"metrics": MetricRecord({"masks": masks})})

    assert check(reply([0.0, 0.5, 1.0])) == [0.0, 0.5, 1.0]
    for bad, reason in (([0.5, 1.0], "expected 3 masks"), ([0.5, 1.0, 0.2, 0.1], "expected 3 masks"),
                        ([0.5, 1.5, 0.2], "outside"), ([0.5, -0.1, 0.2], "outside"),
                        ([float("nan"), 0.5, 0.2], "outside")):
        with pytest.raises(InvalidReply, match=reason):
            check(reply(bad))
    with pytest.raises(InvalidReply):
        check(RecordDict({"metrics": MetricRecord({"other": 1.0})}))


def test_candidates_run_from_the_strongest_down_to_the_unchanged_model():
    masks = np.array([0.9, 0.1, 0.5, 0.2, 0.05])
    assert candidate_counts(masks, "threshold", 0.2) == [3, 2, 1, 0]
    assert candidate_counts(masks, "threshold", 0.0) == [0]
    assert candidate_counts(masks, "budget", 0.2) == [4, 3, 2, 1, 0]
    wide = np.linspace(0.0, 1.0, 1000)
    counts = candidate_counts(wide, "budget", 0.2)
    assert counts[0] == 999 and counts[-1] == 0 and len(counts) == 129, "an even grid on a wide model"


def test_masks_flatten_in_layer_order_and_the_smallest_go_first():
    net, x, _ = three_neuron_net()
    units = neuron_units(net, x)
    masks = {"0": torch.tensor([0.9, 0.1, 0.5])}
    assert flatten_masks(masks).tolist() == pytest.approx([0.9, 0.1, 0.5])
    assert torch.equal(split_masks(units, flatten_masks(masks))["0"], masks["0"])
    with pytest.raises(ValueError, match="2 mask values for 3 neurons"):
        split_masks(units, torch.tensor([0.1, 0.2]))
    assert smallest_first({"a": torch.tensor([0.5, 0.2]), "b": torch.tensor([0.2, 0.0])}) == [3, 1, 2, 0]
    chosen = prune_first({"a": torch.zeros(2), "b": torch.zeros(2)}, [3, 1, 2, 0], 2)
    assert chosen["a"].tolist() == [False, True] and chosen["b"].tolist() == [False, True]


def test_candidate_accuracies_prune_the_first_neurons_of_the_order_and_restore_the_model():
    net, x, y = three_neuron_net()
    units = neuron_units(net, x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # order: neuron 1 (useless), then 2 (carries class 0), then 0 (carries class 1)
    accs = anp_accuracies(net, units, [1, 2, 0], [3, 2, 1, 0], lambda m: accuracy(m, x, y))
    assert accs == [0.5, 0.5, 1.0, 1.0]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "every candidate is undone"


def test_a_round_of_mask_optimisation_continues_from_the_masks_it_is_given():
    from defenses.anp import AdversarialNeuronPruning, ANPSettings, anp_masks

    net, x, y = three_neuron_net()
    units = neuron_units(net, x)
    given = {"0": torch.tensor([0.25, 0.5, 1.0])}

    def fit(settings, start=None):
        return AdversarialNeuronPruning(net, units, settings, start).fit(x, y, torch.Generator().manual_seed(0))

    kept = fit(ANPSettings(iterations=0), given)
    assert torch.equal(kept["0"], given["0"]) and kept["0"] is not given["0"], "no update: the start, copied"
    # starting from every mask 1 is ANP's own start: the same masks, bit for bit
    settings = ANPSettings(iterations=3, batch_size=2)
    _, plain = anp_masks(net, x, y, settings, torch.Generator().manual_seed(0))
    assert torch.equal(plain["0"], fit(settings, {"0": torch.ones(3)})["0"])
    assert not torch.equal(fit(settings, given)["0"], given["0"]) and len(units) == 1


def pruned_neurons(state, start, units):
    """Per unit: the neurons whose weight (or BN scale) is zero in ``state`` but not in ``start``."""
    out = {}
    for u in units:
        now = state[u.weight].flatten(1).abs().sum(1) if state[u.weight].dim() > 1 else state[u.weight].abs()
        was = start[u.weight].flatten(1).abs().sum(1) if start[u.weight].dim() > 1 else start[u.weight].abs()
        out[u.layer] = [i for i in range(u.size) if now[i] == 0 and was[i] != 0]
    return out


@pytest.mark.slow
def test_federated_and_server_anp_prune_the_strongest_candidate_within_the_budget_through_flower(data_dir, tmp_path):
    small = {"dataset": "mnist", "model": "mnist-cnn-bn", "num-clients": 4, "labels-per-client": 10,
             "data-fraction": 0.05, "test-subset": 300, "lr": 0.05, "poison-lr": 0.05, "trigger": "pixel-9",
             "num-rounds": 2, "curve-points": 0, "data-dir": data_dir, "output-dir": str(tmp_path)}
    trained = run_simulation(ExperimentConfig.from_flat({**small, "run-name": "trained"}))
    # the budget rule tries every neuron but one down to none: the choice is the strongest within 0.03; the clients
    # measure the candidates; the attacker (client 0) lies in both of federated ANP's queries, and every reply is
    # accepted
    cfg = ExperimentConfig.from_flat({**small, "defense": "anp-server?,anp", "num-rounds": 0, "anp-iterations": 5,
                                      "anp-rounds": 2,
                                      "anp-pruning": "budget", "clean-budget": 0.03, "run-name": "anp",
                                      "adaptive-attack": "anp-aware", "pruning-accuracy": "clients",
                                      "init-checkpoint": str(trained / "checkpoints" / "trained.pt")})
    run = run_simulation(cfg)
    phases = json.loads((run / "results.json").read_text())["phases"]
    assert set(phases) == {"training", "anp-server", "anp"}
    start = load_checkpoint(trained / "checkpoints" / "trained.pt")["state_dict"]
    from fl_backdoor.models import build_model

    model = build_model(cfg)
    model.load_state_dict(start)
    units = neuron_units(model, torch.zeros(1, 1, 28, 28))
    count = sum(u.size for u in units)
    for name in ("anp-server", "anp"):
        found = phases[name]
        tried = found["anp_tried"]
        counts = [c for c, _ in tried]
        assert counts[0] == count - 1 == found["anp_strongest"] and counts[-1] == 0
        assert len(found["anp_masks"]) == count and all(0.0 <= m <= 1.0 for m in found["anp_masks"])
        assert counts == sorted(counts, reverse=True)
        unchanged = tried[-1][1]
        passing = [c for c, a in tried if c and a >= unchanged - 0.03 - 1e-9]
        assert found["anp_pruned"] == (passing[0] if passing else 0), "the strongest candidate within the budget"
        assert found["budget"]["clean_input"] == unchanged and found["budget"]["within"] is True
        state = load_checkpoint(run / "checkpoints" / f"{name}.pt")["state_dict"]
        zeroed = pruned_neurons(state, start, units)
        assert sum(map(len, zeroed.values())) == found["anp_pruned"]
        assert {k: len(v) for k, v in zeroed.items() if v} == found["anp_pruned_layers"]
        for u in units:  # only the scales (weights) of pruned neurons change; shifts (biases) are kept
            kept = [i for i in range(u.size) if i not in zeroed[u.layer]]
            assert torch.equal(state[u.weight][kept], start[u.weight][kept])
            if u.bias is not None:
                assert torch.equal(state[u.bias], start[u.bias])
    assert phases["anp"]["clients"] == 4 and phases["anp"]["reply_values"] == count
    assert phases["anp"]["anp_rounds"] == 2
    # on the wire a reply is its masks as doubles, plus a few bytes of framing
    assert 8 * count <= phases["anp"]["reply_bytes"]["ANP masks"] <= 8 * count + 256
    candidates = len(phases["anp"]["anp_tried"])
    assert 8 * candidates <= phases["anp"]["reply_bytes"]["candidate accuracies"] <= 8 * candidates + 256
    assert "reply_bytes" not in phases["anp-server"], "the server phase asks no client"
    assert phases["anp"]["aggregation"] == "median"
    replies = np.asarray(list(phases["anp"]["client_masks"].values()))
    assert replies.shape == (4, count)
    assert np.allclose(np.median(replies, axis=0), phases["anp"]["anp_masks"], atol=1e-4), "the recorded replies"
    assert phases["anp"]["client_masks"]["0"] == [1.0] * count, "the lying attacker's reply, as sent"
    assert phases["anp"]["budget"]["measured_on"] == "the clients' data"
    assert phases["anp-server"]["budget"]["measured_on"] == "the validation set"


def test_the_clients_median_drop_sets_each_candidates_accuracy():
    # three clients, candidates (2 neurons, 1 neuron, unchanged): drops (0.2, 0.1, 0), (0.1, 0, 0), (0.4, 0.3, 0)
    replies = [[0.7, 0.8, 0.9], [0.6, 0.7, 0.7], [0.4, 0.5, 0.8]]
    assert median_drop_accuracies(replies) == pytest.approx([0.8 - 0.2, 0.8 - 0.1, 0.8])


def test_a_minority_reporting_ruinous_drops_cannot_veto_the_pruning():
    from clients.behaviours.anp_aware import ANPAware

    honest = [[0.88, 0.9, 0.9], [0.85, 0.86, 0.87], [0.8, 0.82, 0.82], [0.9, 0.9, 0.91], [0.86, 0.87, 0.88]]
    liar = ANPAware(ExperimentConfig.from_flat({}), 0)
    lies = [liar.reply("candidate-accuracy", {"accuracies": list(h), "num-examples": 10})["accuracies"]
            for h in honest[:2]]
    assert lies == [[0.0, 0.0, 1.0]] * 2
    alone, attacked = median_drop_accuracies(honest), median_drop_accuracies([*honest, *lies])
    # the honest drops of the strongest candidate are 0.02, 0.02, 0.02, 0.01, 0.02: with 2 liars of 7 the median
    # drop is still an honest client's (their mean would be 0.3)
    assert alone[-1] - alone[0] == pytest.approx(0.02) and attacked[-1] - attacked[0] == pytest.approx(0.02)
    masks = [[0.05, 0.9, 1.0]] * 5
    lied = [liar.reply("anp-masks", {"masks": m})["masks"] for m in masks[:2]]
    assert lied == [[1.0, 1.0, 1.0]] * 2
    assert aggregate_masks([*masks, *lied], "median").tolist() == pytest.approx([0.05, 0.9, 1.0])
    assert liar.reply("rank", {"ranking": [1]}) == {"ranking": [1]}, "other queries pass unchanged"


def test_the_liar_names_the_queries_as_the_phases_register_them():
    from clients.behaviours import anp_aware
    from server_strategies.phases import anp, candidates

    assert (anp_aware.ANP_MASKS, anp_aware.CANDIDATE_ACCURACY) == (anp.ANP_MASKS, candidates.CANDIDATE_ACCURACY)
