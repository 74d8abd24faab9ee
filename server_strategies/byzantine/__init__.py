"""Byzantine model poisoning by colluding attackers (config key ``byzantine-attack``), one file per attack.

ALIE, IPM and MinMax build one malicious update from honest updates and every
attacking client submits it.  Building it needs updates no single client holds, so it
happens at the server, where the simulation plays the colluding adversary: in an attack
round the attackers train honestly (their poisoning is off, ``gamma`` unused), then,
before the aggregation rule sees anything, their replies are replaced by
G + the malicious update.  What the adversary knows is ``byzantine-knowledge``:

* ``omniscient``: every valid reply's update of the round (the attackers' honest ones
  among them), the setting the three papers evaluate;
* ``colluders``: only the attackers' own honest updates (at least 2 are needed for a
  standard deviation), what colluders could compute among themselves.

An attack is a function of the honest updates (rows of a float64 matrix), the number of
clients n in the round and of attackers m among them::

    @BYZANTINE.register("my-attack")
    def my_attack(honest: np.ndarray, n: int, m: int, cfg: ExperimentConfig) -> np.ndarray: ...

Its AA means nothing (there is no trigger); its effect is on TA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.registry import Registry
from fl_backdoor.settings import Setting
from server_strategies.aggregators import apply_update, flat_updates
from server_strategies.reply_checks import InvalidReply, arrays_checker

KNOWLEDGE = Setting("byzantine-knowledge", "omniscient", "What the Byzantine attackers know: omniscient (every "
                                                         "client's honest update) or colluders (their own).",
                    "attack", choices=("omniscient", "colluders"), added=True)
TrainReply = tuple[int, tuple[ArrayRecord, Any]]  # (client, (its model, its train loss))
ByzantineAttack = Callable[[np.ndarray, int, int, ExperimentConfig], np.ndarray]
BYZANTINE: Registry[ByzantineAttack] = Registry("byzantine attack", __name__, settings=(KNOWLEDGE,),
                                                choices={"byzantine-attack": lambda r: ("none", *r.names())})


def poison_replies(cfg: ExperimentConfig, global_arrays: ArrayRecord, local: list[ArrayRecord],
                   attacking: list[bool]) -> list[ArrayRecord]:
    """The round's local models with every attacking client's replaced by G + the malicious update."""
    m = sum(attacking)
    if cfg.byzantine_attack == "none" or m == 0:
        return local
    updates = flat_updates(global_arrays, local)
    known = updates if KNOWLEDGE.of(cfg) == "omniscient" else updates[np.asarray(attacking)]
    if len(known) < 2:
        print(f"byzantine: {len(known)} honest update(s) known, too few for a standard deviation; "
              f"the attackers submit their honest models this round", flush=True)
        return local
    poisoned = apply_update(global_arrays, BYZANTINE[cfg.byzantine_attack](known, len(local), m, cfg))
    return [poisoned if bad else arrays for arrays, bad in zip(local, attacking, strict=True)]


def byzantine_replies(cfg: ExperimentConfig, global_arrays: ArrayRecord, valid: list[TrainReply],
                      attacking: list[bool], refuse: Callable[[int, str], None]) -> list[TrainReply]:
    """The valid train replies (client, (model, loss)) with every attacker's model replaced by ``poison_replies``.

    The server checks each built model as it checks a reply: one it would refuse (e.g. a negative
    batch-norm running variance) is dropped through ``refuse(client, reason)``."""
    if cfg.byzantine_attack == "none":
        return valid
    poisoned = poison_replies(cfg, global_arrays, [model for _, (model, _) in valid], attacking)
    check = arrays_checker(global_arrays)
    kept = []
    for (client, (_, loss)), model, bad in zip(valid, poisoned, attacking, strict=True):
        if bad:
            try:
                check(model)
            except InvalidReply as exc:
                refuse(client, f"Byzantine model: {exc}")
                continue
        kept.append((client, (model, loss)))
    return kept
