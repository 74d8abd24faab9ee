"""FedAvg in the paper's and DBA's forms, and client sampling."""

import numpy as np
from flwr.app import Array, ArrayRecord

from fl_backdoor.config import ExperimentConfig
from server_strategies.aggregators.fedavg import average_update
from server_strategies.federation import Federation


def record(**arrays):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def test_paper_form_is_the_plain_mean():
    g = record(w=[0.0, 1.0], n=np.array(4, dtype=np.int64))
    locals_ = [record(w=[1.0, 1.0], n=np.array(5, dtype=np.int64)),
               record(w=[3.0, -1.0], n=np.array(6, dtype=np.int64))]
    out = average_update(g, locals_, eta=1.0)
    assert np.allclose(out["w"].numpy(), [2.0, 0.0])
    assert out["n"].numpy().dtype == np.int64 and int(out["n"].numpy()) == 6  # 5.5 rounds half to even


def test_dba_form_uses_server_learning_rate():
    g = record(w=[1.0, 1.0, 1.0])
    locals_ = [record(w=[2.0, 1.0, 0.0]), record(w=[4.0, 1.0, 2.0])]
    out = average_update(g, locals_, eta=0.1)
    # G + eta/n * sum(L_i - G) = 1 + 0.1/2 * ([1,0,-1] + [3,0,1])
    assert np.allclose(out["w"].numpy(), [1.2, 1.0, 1.0])


def test_sampling_is_seeded_per_round_and_forces_attackers():
    cfg = ExperimentConfig.from_flat({"num-clients": 50, "fraction": 0.2, "num-attackers": 5,
                                      "attack-rounds": "3", "gamma": 2})
    federation = Federation(cfg, None, {c: 1000 + c for c in range(50)})
    r3 = federation.sample(3, "train")
    assert len(r3) == 10 and set(range(5)) <= set(r3)
    assert federation.sample(3, "train") == r3, "same round, same sample (resume-safe)"
    r4 = federation.sample(4, "train")
    assert len(r4) == 10 and r4 != r3
    everyone = Federation(cfg.replace(fraction=1.0), None, {c: c for c in range(50)})
    assert everyone.sample(1, "train") == list(range(50))
