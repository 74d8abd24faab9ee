"""Run-config keys, each declared once by what reads it, and the preconditions between keys.

The core's keys are the fields of :class:`fl_backdoor.config.ExperimentConfig`.  A
registered component (aggregator, behaviour, trigger, phase, model) declares its own
beside its code, when it registers::

    TRIM = Setting("my-trim", 0.1, "my-rule: share cut at each end.", "federation", low=0.0, high=0.5, high_open=True)

    @AGGREGATORS.register("my-rule", settings=(TRIM,), rules=(Rule("my-trim", "...", my_check),))
    def my_rule(global_arrays, local, cfg): ...  # reads TRIM.of(cfg)

The config schema is the core's keys plus every declared one, so a new component with a
setting edits no other file.  The packages that hold the components are found through the
``fl_backdoor.components`` entry points of the installed project (pyproject.toml); a
user's own files come in through the ``plugins`` key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, Protocol, TypeVar, cast

from .errors import ConfigError, UserError

Value = bool | int | float | str
V = TypeVar("V", bool, int, float, str)
COMPONENTS = "fl_backdoor.components"  # the entry-point group naming the packages that register components


class HasValues(Protocol):
    """What a setting is read from: a config (``ExperimentConfig.value``)."""

    def value(self, key: str) -> Value: ...


@dataclass(frozen=True)
class Setting(Generic[V]):
    """One run-config key: its name, default (whose type is the key's type), meaning, roles and check.

    ``roles`` are space-separated names of ``fl_backdoor.config.ROLES``.  The check: a value
    must be one of ``choices`` (a tuple, or a function giving one), and a number must lie
    within ``low``/``high`` (excluded with ``low_open``/``high_open``) and be finite unless
    ``infinite``.  ``added``: the key came after sweeps were recorded, so a run's identity
    counts it only when set away from its default (every new key should be).
    """

    key: str
    default: V
    help: str
    roles: str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    infinite: bool = False
    added: bool = True

    @property
    def kind(self) -> type:
        """The key's type: bool, int, float or str."""
        return type(self.default)

    @property
    def role_names(self) -> tuple[str, ...]:
        """The roles as a tuple."""
        return tuple(self.roles.split())

    def of(self, cfg: HasValues) -> V:
        """This key's value in a config."""
        return cast("V", cfg.value(self.key))

    def choice_names(self) -> tuple[str, ...]:
        """The allowed values of a key with choices (empty for any other)."""
        return self.choices() if callable(self.choices) else self.choices

    def coerce(self, raw: Any) -> V:
        """A raw value (often a string from a command line) as the key's type; ConfigError when it is not one."""
        return cast("V", coerce(self.key, raw, self.kind))

    def range_text(self) -> str:
        """The numeric range in words ('> 0', 'in [0, 1)', 'in 1..10'); empty when unbounded."""
        low, high = self.low, self.high
        if low is None and high is None:
            return ""
        if self.kind is int and low is not None and high is not None and not (self.low_open or self.high_open):
            return f"in {low:g}..{high:g}"
        if low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{low:g}, {high:g}{')' if self.high_open else ']'}"
        if low is not None:
            return f"{'>' if self.low_open else '>='} {low:g}"
        return f"{'<' if self.high_open else '<='} {high:g}"

    def allowed(self) -> str:
        """Every value the key accepts, in words (the configuration reference)."""
        if self.choices:
            return "one of " + ", ".join(f"`{c}`" for c in self.choice_names())
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "text"
        number = "an integer" if self.kind is int else ("a number" if self.infinite else "a finite number")
        return " ".join(p for p in (number, self.range_text()) if p)

    def problem(self, value: Value) -> str | None:
        """Why a value of the key's type is not allowed ('key: ...'), or None."""
        if self.choices:
            names = self.choice_names()
            if value not in names:
                from .registry import unknown_choice

                return unknown_choice(self.key, str(value), names)
            return None
        if self.kind not in (int, float) or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if math.isnan(value):
            return f"{self.key}: must be a number, got nan"
        if math.isinf(value) and not self.infinite:
            return f"{self.key}: must be a finite number, got {value}"
        too_low = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        too_high = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        if too_low or too_high:
            return f"{self.key}: must be {self.range_text()}, got {value}"
        return None


@dataclass(frozen=True)
class Rule:
    """A precondition between keys, checked before anything runs.

    ``test`` gets the config and returns why it fails (or None); the message names ``key``.
    An error rule refuses a combination that can never act; a ``warning`` rule prints one
    line for one that acts only sometimes.  ``text`` says what must hold (the configuration
    reference lists it under ``key``).
    """

    key: str
    text: str
    test: Callable[[Any], str | None]
    warning: bool = False

    def message(self, cfg: Any) -> str | None:
        """'key: why' when the rule fails on cfg, else None."""
        found = self.test(cfg)
        return f"{self.key}: {found}" if found else None


def coerce(key: str, value: Any, kind: type) -> Value:
    """Convert a raw value to ``kind`` (bool, int, float or str); ConfigError naming the key when it is not one."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


@dataclass(frozen=True)
class Declared:
    """A component's setting in the schema: the setting, who declared it, and whether the project ships it."""

    setting: Setting[Any]
    owners: tuple[str, ...]
    builtin: bool


_DECLARED: dict[str, Declared] = {}


def declare(settings: tuple[Setting[Any], ...], owner: str, builtin: bool) -> None:
    """Add a component's settings to the schema; a key declared again must be the same setting."""
    for setting in settings:
        known = _DECLARED.get(setting.key)
        if known is not None and known.setting != setting:
            raise ValueError(f"setting '{setting.key}' is declared twice, differently ({owner} and "
                             f"{', '.join(known.owners)})")
        owners = (*known.owners, owner) if known else (owner,)
        _DECLARED[setting.key] = Declared(setting, owners, builtin and (known.builtin if known else True))


_LOADING = {"state": "no"}  # no -> loading -> done


def declared() -> dict[str, Declared]:
    """Every component setting by key, in the keys' order (the same in every process, whatever the order in which
    the components were imported), the installed components loaded first."""
    load_components()
    return dict(sorted(_DECLARED.items()))


def load_components() -> None:
    """Import the packages named by the ``fl_backdoor.components`` entry points and every module in them,
    so that all components are registered with their settings (once per process)."""
    if _LOADING["state"] != "no":
        return
    _LOADING["state"] = "loading"
    try:
        points = metadata.entry_points(group=COMPONENTS)
        if not points:
            raise UserError("no fl-backdoor components are installed: run `pip install -e .` in the project "
                            "(README.md: Install)")
        for point in points:
            point.load()
        from .registry import REGISTRIES

        for registry in REGISTRIES:
            registry.names()
    except BaseException:
        _LOADING["state"] = "no"
        raise
    _LOADING["state"] = "done"
