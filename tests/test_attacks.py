"""Model replacement scaling, what the server's reply check makes of it, and the attack schedule."""

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from clients.local_training import run_local_job
from fl_backdoor import protocol
from fl_backdoor.attacks import (
    attack_gamma,
    attacker_trigger,
    is_attacking,
    poison_settings,
    scale_update,
    simultaneous_attackers,
)
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.models import build_model
from server_strategies.reply_checks import InvalidReply, model_checker


def test_scale_update_matches_formula():
    g = {"w": torch.tensor([1.0, -2.0, 0.5]), "n": torch.tensor(10, dtype=torch.long)}
    l = {"w": torch.tensor([1.5, -1.0, 0.0]), "n": torch.tensor(12, dtype=torch.long)}
    out = scale_update(g, l, gamma=4.0)
    assert torch.allclose(out["w"], torch.tensor([1.0 + 4 * 0.5, -2.0 + 4 * 1.0, 0.5 + 4 * -0.5]))
    assert out["n"].dtype == torch.long and int(out["n"]) == 10 + 4 * 2
    same = scale_update(g, l, gamma=1.0)
    assert torch.equal(same["w"], l["w"])


def test_replacement_survives_equal_weight_averaging():
    """With gamma = N and benign clients at G, the average equals the attacker's model."""
    torch.manual_seed(0)
    n = 5
    g = {"w": torch.randn(4, 3)}
    attacker = {"w": torch.randn(4, 3)}
    submitted = scale_update(g, attacker, gamma=n)
    updates = [submitted["w"]] + [g["w"]] * (n - 1)
    new_global = g["w"] + sum(u - g["w"] for u in updates) / n
    assert torch.allclose(new_global, attacker["w"], atol=1e-6)


def test_schedule_and_pieces():
    cfg = ExperimentConfig.from_flat({"num-clients": 10, "attacker-ids": "2,5,7,8", "attack-rounds": "3-4,9",
                                      "trigger": "dba", "attack-mode": "all-to-one", "gamma": 5})
    assert [r for r in range(1, 11) if is_attacking(cfg, 5, r, "train")] == [3, 4, 9]
    assert not is_attacking(cfg, 1, 3, "train")
    assert is_attacking(cfg, 5, 6, "finetune"), "attackers keep attacking during fine-tuning"
    assert not is_attacking(cfg.replace(finetune_attack="benign"), 5, 6, "finetune")
    assert is_attacking(cfg.replace(finetune_attack="benign"), 5, 3, "train"), "training attacks are unchanged"
    assert [attack_gamma(cfg.replace(finetune_attack=k), "finetune") for k in ("replace", "poison")] == [5.0, 1.0]
    assert attack_gamma(cfg.replace(finetune_attack="poison"), "train") == 5.0
    assert [cfg.dba_piece_of(a) for a in (2, 5, 7, 8)] == [0, 1, 2, 3]
    single_shot = cfg.replace(attack_rounds="3/5/7-8/9")
    assert [[r for r in range(1, 11) if is_attacking(single_shot, a, r, "train")] for a in (2, 5, 7, 8)] == \
        [[3], [5], [7, 8], [9]]
    assert set(attacker_trigger(cfg, 7).pixels) == {(3, c) for c in range(4)}


def test_poison_lr_steps_at_20_and_80_percent():
    cfg = ExperimentConfig.from_flat({"poison-epochs": 10, "poison-lr-steps": True})
    assert poison_settings(cfg).lr_milestones == (2, 8)
    decayed = cfg.replace(lr_decay=0.5)
    assert poison_settings(decayed, 3).lr == cfg.poison_lr * 0.25


def test_fine_tuning_attacker_boosts_only_when_it_replaces(data_dir):
    base = {"data-dir": data_dir, "data-fraction": 0.02, "num-clients": 2, "gamma": 2, "poison-epochs": 1}
    state = build_model(ExperimentConfig.from_flat(base)).state_dict()

    def job(kind, phase):
        return run_local_job(ExperimentConfig.from_flat({**base, "finetune-attack": kind}), 0, state, 1, phase)
    replace, poison, benign = (job(k, "finetune") for k in ("replace", "poison", "benign"))
    assert replace.attacked and poison.attacked and not benign.attacked
    boosted = scale_update(state, poison.state, 2.0)
    assert all(torch.equal(replace.state[k], boosted[k]) for k in state), "replace: G + gamma (L - G)"
    assert any(not torch.equal(poison.state[k], boosted[k]) for k in state), "poison submits L itself"
    trained, reference = job("poison", "train"), job("replace", "train")
    assert trained.attacked and all(torch.equal(trained.state[k], reference.state[k]) for k in state), \
        "training rounds boost whatever finetune-attack says"


def test_fine_tuning_never_replaces_more_than_the_busiest_training_round():
    # the DBA reference: four single-shot attackers, gamma 100 = n / eta (10 clients, eta 0.1)
    dba = ExperimentConfig.from_flat({"num-clients": 100, "fraction": 0.1, "num-attackers": 4, "gamma": 100,
                                      "aggregation": "dba", "server-lr": 0.1, "attack-rounds": "12/14/16/18",
                                      "trigger": "dba", "attack-mode": "all-to-one", "attack-label": 2})
    assert simultaneous_attackers(dba) == 1
    assert attack_gamma(dba, "train") == 100
    assert attack_gamma(dba, "finetune") == 25, "four attackers share one model replacement per round"
    overlapping = dba.replace(attack_rounds="12-14/13-15/20/all")
    assert simultaneous_attackers(overlapping) == 3  # rounds 13-14: the first two and the 'all' one
    assert attack_gamma(overlapping, "finetune") == 75
    few = dba.replace(gamma=2.0)
    assert attack_gamma(few, "finetune") == 1.0, "below 1 an attacker just poisons"


def _reply(state: dict[str, torch.Tensor]) -> RecordDict:
    return RecordDict({protocol.ARRAYS: ArrayRecord({k: v.contiguous() for k, v in state.items()}),
                       protocol.METRICS: MetricRecord({"num-examples": 10, "train-loss": 0.5})})


def test_replacement_of_a_running_variance_below_half_the_global_one_is_refused():
    """gamma = 2 sends 2L - G: negative where the attacker's variance is below half the global model's."""
    global_state = {"bn.running_var": torch.tensor([1.0, 2.0, 4.0]), "bn.running_mean": torch.tensor([0.0, 1.0, 2.0])}
    check = model_checker(ArrayRecord(global_state))
    at_half = {"bn.running_var": torch.tensor([0.5, 1.0, 2.0]), "bn.running_mean": torch.tensor([-3.0, -3.0, -3.0])}
    sent = scale_update(global_state, at_half, gamma=2.0)
    assert sent["bn.running_var"].tolist() == [0.0, 0.0, 0.0]
    check(_reply(sent))  # zero variance is valid; so are negative running means
    below = {**at_half, "bn.running_var": torch.tensor([0.5, 0.75, 2.0])}
    sent = scale_update(global_state, below, gamma=2.0)
    assert sent["bn.running_var"].tolist() == [0.0, -0.5, 0.0]
    with pytest.raises(InvalidReply, match=r"array 'bn.running_var' holds a negative variance \(min -0.5\)"):
        check(_reply(sent))


def test_own_statistics_replace_the_weights_and_send_the_running_statistics_as_trained():
    g = {"conv.weight": torch.tensor([1.0, 2.0]), "bn.running_mean": torch.tensor([0.0, 1.0]),
         "bn.running_var": torch.tensor([1.0, 4.0]), "bn.num_batches_tracked": torch.tensor(10)}
    l = {"conv.weight": torch.tensor([2.0, 0.0]), "bn.running_mean": torch.tensor([1.0, 0.0]),
         "bn.running_var": torch.tensor([0.25, 1.0]), "bn.num_batches_tracked": torch.tensor(15)}
    scaled = scale_update(g, l, gamma=2.0)
    assert scaled["bn.running_var"].tolist() == [-0.5, -2.0] and int(scaled["bn.num_batches_tracked"]) == 20
    own = scale_update(g, l, gamma=2.0, statistics="own")
    assert own["conv.weight"].tolist() == [3.0, -2.0], "the weights are replaced as before"
    assert all(torch.equal(own[k], l[k]) for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"))
    check = model_checker(ArrayRecord(g))
    check(_reply(own))
    with pytest.raises(InvalidReply, match="negative variance"):
        check(_reply(scaled))
