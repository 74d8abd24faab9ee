"""Validation of every client reply before the server uses it.

Clients are the adversary: a reply is used only after its checker accepted it.
Each checker takes a reply's RecordDict and returns the parsed payload, or raises
InvalidReply with a one-line reason.  The checks of train and evaluate replies are
here; a phase's query declares its own check beside it, built from the pieces below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fl_backdoor import protocol
from fl_backdoor.models import RUNNING_VARIANCE

Checker = Callable[[RecordDict], Any]


class InvalidReply(ValueError):
    """A reply that breaks the protocol; the message says how."""


def metrics_of(content: RecordDict) -> Any:
    """The reply's metrics record; InvalidReply when it has none."""
    if protocol.METRICS not in content.metric_records:
        raise InvalidReply("no metrics record")
    return content.metric_records[protocol.METRICS]


def num_examples(metrics: Any) -> int:
    """The reply's example count; InvalidReply when it is not a count."""
    value = metrics.get("num-examples")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise InvalidReply(f"num-examples {value!r} is not a count")
    return int(value)


def arrays_checker(reference: ArrayRecord) -> Callable[[ArrayRecord], None]:
    """A model's arrays: the reference's names, shapes and dtypes, all finite; InvalidReply otherwise.

    A batch-norm running variance (an array named ``*running_var``) must also be >= 0: once the
    aggregate holds a negative one, ``sqrt(var + eps)`` is NaN and so is every output."""
    expected = {name: (tuple(a.shape), a.dtype) for name, a in reference.items()}

    def check(arrays: ArrayRecord) -> None:
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
            if name.endswith(RUNNING_VARIANCE) and (values < 0).any():
                raise InvalidReply(f"array '{name}' holds a negative variance (min {float(values.min()):.3g})")

    return check


def model_checker(reference: ArrayRecord) -> Checker:
    """A train reply: one model that ``arrays_checker(reference)`` accepts, and a finite train loss."""
    check_arrays = arrays_checker(reference)

    def check(content: RecordDict) -> tuple[ArrayRecord, float]:
        if list(content.array_records) != [protocol.ARRAYS]:
            raise InvalidReply(f"expected one ArrayRecord '{protocol.ARRAYS}', got {list(content.array_records)}")
        arrays = content.array_records[protocol.ARRAYS]
        check_arrays(arrays)
        metrics = metrics_of(content)
        num_examples(metrics)
        loss = metrics.get("train-loss", 0.0)
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise InvalidReply(f"train-loss {loss!r} is not finite")
        return arrays, float(loss)

    return check


def unit_value(metrics: Any, key: str) -> float:
    """A number in [0, 1]; InvalidReply otherwise."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidReply(f"{key} {value!r} lies outside [0, 1]")
    return float(value)


def unit_values(metrics: Any, key: str, count: int) -> list[float]:
    """``count`` numbers in [0, 1]; InvalidReply otherwise."""
    values = metrics.get(key)
    if not isinstance(values, list) or len(values) != count:
        raise InvalidReply(f"expected {count} {key}")
    if not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values):
        raise InvalidReply(f"a value of {key} lies outside [0, 1]")
    return [float(v) for v in values]


def evaluate_checker() -> Checker:
    """An evaluate reply: one accuracy in [0, 1] and an example count."""
    def check(content: RecordDict) -> tuple[float, int]:
        metrics = metrics_of(content)
        return unit_value(metrics, "accuracy"), num_examples(metrics)
    return check
