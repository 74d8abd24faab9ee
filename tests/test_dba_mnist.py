"""The DBA MNIST experiment: the reference configuration, and a centralized attack that matches it."""

from experiments.dba_mnist import CLEAN_ROUNDS, SHOTS, attacks
from fl_backdoor.triggers import trigger_for


def test_dba_and_centralized_share_the_clean_model_and_the_shots():
    plan = attacks(40, [])
    dba, central = plan.dba.cfg, plan.centralized.cfg
    assert plan.dba.parent is plan.pretrain and plan.centralized.parent is plan.pretrain
    assert plan.pretrain.cfg.num_rounds == CLEAN_ROUNDS and plan.pretrain.cfg.attack_rounds == "none"
    assert dba.num_rounds == central.num_rounds == 30
    assert (dba.num_clients, dba.clients_per_round, dba.partition, dba.dirichlet_alpha) == (100, 10, "dirichlet", 0.5)
    assert (dba.gamma, dba.server_eta, dba.poison_per_batch, dba.poison_epochs) == (100, 0.1, 20, 10)
    rounds = range(1, 41)
    assert [[r for r in rounds if dba.attacks_in_round(a, r)] for a in dba.attackers] == [[s] for s in SHOTS]
    assert [r for r in rounds if central.attacks_in_round(0, r)] == list(SHOTS) and central.attackers == (0,)
    whole = trigger_for("dba-global", 28)
    assert set(whole.pixels) == set(trigger_for("dba", 28).pixels)
    assert {p for k in range(4) for p in trigger_for("dba", 28, piece=k).pixels} == set(whole.pixels)
