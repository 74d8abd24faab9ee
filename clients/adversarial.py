"""Attackers who know the defense (Sec. VI-B), and attackers who send broken replies.

Adaptive attacks (config ``adaptive-attack``):

* rank-manipulation (Attack 1): the attacker finds its backdoor neurons (those the
  trigger excites most above clean data) and reports them as the most active, so RAP
  ranks them last for pruning and its MVP votes keep them;
* pruning-aware (Attack 2): the attacker trains with its own estimate of the final
  mask (its p*P most dormant neurons on clean data) installed, so the backdoor lives
  in neurons benign data also uses; ``pruning-aware-oracle`` is given the real final
  mask (``oracle-checkpoint``);
* aw-aware: after every step, and on the submitted model, the attacker clips its last
  conv layer to mu +/- adaptive-delta * sigma, so AW finds nothing extreme to remove.

Malformed replies (config ``malformed-reply``) exercise the server's reply validation.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn

from fl_backdoor.masks import NeuronMask
from defenses.neuron_ranking import local_votes, mean_activations, votes_to_prune
from fl_backdoor.attacks import attacker_trigger
from fl_backdoor.config import ExperimentConfig
from fl_backdoor.run_dir import load_checkpoint

MODEL_FAULTS = ("wrong-names", "wrong-shape", "wrong-dtype", "non-finite")
PROCESS_FAULTS = ("raise", "hang", "crash")


def backdoor_excess(model: nn.Module, layer: str, x: torch.Tensor, cfg: ExperimentConfig, client_id: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(clean activations, trigger-induced excess) of the layer's neurons on the attacker's data."""
    clean = mean_activations(model, layer, x, cfg.eval_batch_size)
    triggered = mean_activations(model, layer, attacker_trigger(cfg, client_id).apply(x), cfg.eval_batch_size)
    return clean, triggered - clean


def manipulated_activations(clean: np.ndarray, excess: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Attack 1: the neurons the trigger excites most are reported as more active than any other."""
    count = max(1, int(round(fraction * len(clean))))
    backdoor = np.argsort(-excess, kind="stable")[:count]
    reported = clean.copy()
    reported[backdoor] = clean.max() + 1.0 + excess[backdoor] - excess[backdoor].min()
    return reported


def estimated_mask(model: nn.Module, layer: str, x: torch.Tensor, cfg: ExperimentConfig) -> NeuronMask:
    """Attack 2: the attacker's guess of the final mask, its own p*P most dormant neurons."""
    activations = mean_activations(model, layer, x, cfg.eval_batch_size)
    votes = local_votes(activations, cfg.mvp_rate)
    return NeuronMask(layer, len(votes), tuple(i for i, v in enumerate(votes) if v))


def oracle_mask(cfg: ExperimentConfig) -> NeuronMask:
    """Attack 2, oracle variant: the final mask saved in ``oracle-checkpoint``."""
    mask = load_checkpoint(cfg.oracle_checkpoint).get("mask")
    if not mask:
        raise ValueError(f"oracle-checkpoint {cfg.oracle_checkpoint} holds no pruning mask")
    return NeuronMask.from_dict(mask)


@torch.no_grad()
def clip_weights(weight: torch.Tensor, delta: float) -> None:
    """aw-aware: clamp weights in place into mu +/- delta * sigma of those weights."""
    mu, sigma = weight.mean(), weight.std(unbiased=False)
    weight.clamp_(float(mu - delta * sigma), float(mu + delta * sigma))


def clip_to_band(model: nn.Module, layer: str, delta: float) -> None:
    """clip_weights on a layer of a model (after every training step)."""
    clip_weights(model.get_submodule(layer).weight, delta)


def clip_to_band_state(state: dict[str, torch.Tensor], layer: str, delta: float) -> None:
    """clip_weights on a layer of a state dict (the submitted, scaled model)."""
    clip_weights(state[f"{layer}.weight"], delta)


def break_process(kind: str, timeout: float) -> None:
    """The process faults: raise, hang past the server's timeout, or kill the worker."""
    if kind == "raise":
        raise RuntimeError("malformed-reply=raise: the attacker's client failed on purpose")
    if kind == "hang":
        time.sleep(timeout + 30.0)
    if kind == "crash":
        os._exit(17)


def corrupt_state(kind: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model reply broken in one way: renamed, reshaped, retyped, or holding NaN/Inf."""
    name = next(iter(state))
    broken = dict(state)
    if kind == "wrong-names":
        broken[name + "_renamed"] = broken.pop(name)
    elif kind == "wrong-shape":
        broken[name] = broken[name][:-1]
    elif kind == "wrong-dtype":
        broken[name] = broken[name].double()
    elif kind == "non-finite":
        bad = broken[name].clone()
        bad.view(-1)[0] = float("nan")
        bad.view(-1)[-1] = float("inf")
        broken[name] = bad
    return broken


def corrupt_report(kind: str, method: str, values: list[int], rate: float) -> list[int]:
    """bad-ranking: a RAP ranking with a repeated rank; bad-votes: MVP votes with one vote too many."""
    if kind == "bad-ranking" and method == "rap":
        return [2 if values[0] == 1 else 1] + values[1:]
    if kind == "bad-votes" and method == "mvp":
        ones = min(len(values), votes_to_prune(rate, len(values)) + 1)
        return [1] * ones + [0] * (len(values) - ones)
    return values
