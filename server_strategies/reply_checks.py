"""Validation of every client reply before the server uses it.

Clients are the adversary: a reply is used only after its checker accepted it.
Each checker takes a reply's RecordDict and returns the parsed payload, or raises
InvalidReply with a one-line reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from defenses.neuron_ranking import votes_to_prune
from fl_backdoor import protocol

Checker = Callable[[RecordDict], Any]


class InvalidReply(ValueError):
    """A reply that breaks the protocol; the message says how."""


def _metrics(content: RecordDict) -> Any:
    if protocol.METRICS not in content.metric_records:
        raise InvalidReply("no metrics record")
    return content.metric_records[protocol.METRICS]


def _num_examples(metrics: Any) -> int:
    value = metrics.get("num-examples")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise InvalidReply(f"num-examples {value!r} is not a count")
    return int(value)


def model_checker(reference: ArrayRecord) -> Checker:
    """A train reply: one model with the reference's names, shapes and dtypes, all finite."""
    expected = {name: (tuple(a.shape), a.dtype) for name, a in reference.items()}

    def check(content: RecordDict) -> tuple[ArrayRecord, float]:
        if list(content.array_records) != [protocol.ARRAYS]:
            raise InvalidReply(f"expected one ArrayRecord '{protocol.ARRAYS}', got {list(content.array_records)}")
        arrays = content.array_records[protocol.ARRAYS]
        names = set(arrays.keys())
        if names != set(expected):
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            raise InvalidReply(f"array names differ (missing {missing[:3]}, unexpected {extra[:3]})")
        for name, array in arrays.items():
            shape, dtype = expected[name]
            if tuple(array.shape) != shape:
                raise InvalidReply(f"array '{name}' has shape {tuple(array.shape)}, expected {shape}")
            if array.dtype != dtype:
                raise InvalidReply(f"array '{name}' has dtype {array.dtype}, expected {dtype}")
            values = array.numpy()
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                raise InvalidReply(f"array '{name}' holds NaN or Inf")
        metrics = _metrics(content)
        _num_examples(metrics)
        loss = metrics.get("train-loss", 0.0)
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise InvalidReply(f"train-loss {loss!r} is not finite")
        return arrays, float(loss)

    return check


def ranking_checker(size: int) -> Checker:
    """A RAP reply: a permutation of the ranks 1..P."""
    def check(content: RecordDict) -> list[int]:
        ranking = _metrics(content).get("ranking")
        if not isinstance(ranking, list) or sorted(ranking) != list(range(1, size + 1)):
            raise InvalidReply(f"ranking is not a permutation of 1..{size}")
        return [int(r) for r in ranking]
    return check


def votes_checker(size: int, rate: float) -> Checker:
    """An MVP reply: P votes of 0 or 1 with exactly round(p * P) ones."""
    ones = votes_to_prune(rate, size)

    def check(content: RecordDict) -> list[int]:
        votes = _metrics(content).get("votes")
        if not isinstance(votes, list) or len(votes) != size or any(v not in (0, 1) for v in votes):
            raise InvalidReply(f"votes are not {size} values of 0 or 1")
        if sum(votes) != ones:
            raise InvalidReply(f"{int(sum(votes))} votes to prune, expected exactly {ones} (p={rate})")
        return [int(v) for v in votes]
    return check


def _unit_value(metrics: Any, key: str) -> float:
    value = metrics.get(key)
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidReply(f"{key} {value!r} lies outside [0, 1]")
    return float(value)


def _unit_values(metrics: Any, key: str, count: int) -> list[float]:
    values = metrics.get(key)
    if not isinstance(values, list) or len(values) != count:
        raise InvalidReply(f"expected {count} {key}")
    if not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values):
        raise InvalidReply(f"a value of {key} lies outside [0, 1]")
    return [float(v) for v in values]


def accuracies_checker(count: int) -> Checker:
    """A candidate-accuracy reply: ``count`` accuracies in [0, 1] and an example count."""
    def check(content: RecordDict) -> tuple[list[float], int]:
        metrics = _metrics(content)
        return _unit_values(metrics, "accuracies", count), _num_examples(metrics)
    return check


def rnp_checker(count: int) -> Checker:
    """A federated RNP reply: ``count`` channel masks in [0, 1], an example count, and the client's
    unlearning epochs (a count) and unlearned accuracy (in [0, 1])."""
    def check(content: RecordDict) -> tuple[list[float], int, int, float]:
        metrics = _metrics(content)
        epochs = metrics.get("unlearning-epochs")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise InvalidReply(f"unlearning-epochs {epochs!r} is not a count")
        return (_unit_values(metrics, "masks", count), _num_examples(metrics), epochs,
                _unit_value(metrics, "unlearned-accuracy"))
    return check


def evaluate_checker() -> Checker:
    """An evaluate reply: one accuracy in [0, 1] and an example count."""
    def check(content: RecordDict) -> tuple[float, int]:
        metrics = _metrics(content)
        return _unit_value(metrics, "accuracy"), _num_examples(metrics)
    return check
