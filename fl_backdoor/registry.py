"""Registries of pluggable components, keyed by the config's choice strings.

Each kind of component (model, trigger, aggregator, client behaviour, cleansing
phase) has one :class:`Registry`, owned by a package.  A component registers itself
with a decorator in its own file inside that package::

    @TRIGGERS.register("blend")
    def blend(image_size: int, origin: tuple[int, ...], piece: int | None) -> Trigger: ...

The registry imports every module of its package the first time it is asked for a
name, so a new file is all a new built-in component needs.  Components outside the
packages (a user's own file, a test) are loaded with the config key ``plugins``:
modules or ``.py`` files imported in every process (server and clients) before the
config is validated, so their names become valid choices.

A registry also knows which config keys choose among its entries (``choices``), which
entries a config picks (``picks``), and what each entry declares: its settings (keys of
its own, ``fl_backdoor.settings.Setting``) and the rules that must hold when it is picked.
Settings shared by every entry of a package are declared by the registry itself.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigError
from .settings import Rule, Setting, declare

T = TypeVar("T")
Choices = Callable[["Registry[Any]"], tuple[str, ...]]
Picks = Callable[[Any], tuple[str, ...]]


class Registry(Generic[T]):
    """Named components of one kind, filled by ``register``; ``package``'s modules are imported on first use.

    ``choices`` maps each config key whose value names entries to the values it allows;
    ``picks`` gives the entries a config picks (by default the values of those keys, except
    'none'), and raises ConfigError for a value that names none.  ``settings`` are keys every
    entry of the package reads.  ``package`` None: the registry imports nothing (its entries
    register from other packages).
    """

    def __init__(self, kind: str, package: str | None, *, choices: Mapping[str, Choices] | None = None,
                 picks: Picks | None = None, settings: tuple[Setting[Any], ...] = ()) -> None:
        self.kind = kind
        self.package = package
        self.choices = dict(choices or {})
        self._picks = picks
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._settings: dict[str, tuple[Setting[Any], ...]] = {}
        self._rules: dict[str, tuple[Rule, ...]] = {}
        self._builtin: dict[str, bool] = {}
        self._discovered = package is None
        declare(settings, kind, builtin=True)
        REGISTRIES.append(self)

    def register(self, name: str, *, settings: tuple[Setting[Any], ...] = (), rules: tuple[Rule, ...] = (),
                 **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` with its settings, rules and metadata."""
        def decorate(entry: T) -> T:
            self.add(name, entry, settings=settings, rules=rules, **meta)
            return entry
        return decorate

    def add(self, name: str, entry: T, *, settings: tuple[Setting[Any], ...] = (), rules: tuple[Rule, ...] = (),
            **meta: Any) -> None:
        """Register ``entry`` under ``name``; a name can be taken only once."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        module = str(getattr(getattr(entry, "func", entry), "__module__", ""))  # a partial: its function's
        builtin = self.package is not None and (module == self.package or module.startswith(self.package + "."))
        declare(settings, f"{self.kind} {name}", builtin)
        self._entries[name] = entry
        self._meta[name] = meta
        self._settings[name] = settings
        self._rules[name] = rules
        self._builtin[name] = builtin

    def _discover(self) -> None:
        if self._discovered or self.package is None:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        self._discover()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> T:
        return self._entries[self._known(name)]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata ``name`` was registered with."""
        return self._meta[self._known(name)]

    def settings(self, name: str) -> tuple[Setting[Any], ...]:
        """The settings entry ``name`` registered with."""
        return self._settings[self._known(name)]

    def rules(self, name: str) -> tuple[Rule, ...]:
        """The rules that must hold when entry ``name`` is picked."""
        return self._rules[self._known(name)]

    def builtin(self, name: str) -> bool:
        """Whether entry ``name`` is one of the project's own (registered by a module of the registry's package)."""
        return self._builtin[self._known(name)]

    def picked(self, cfg: Any) -> tuple[str, ...]:
        """The entries a config picks; ConfigError for a choice that names none."""
        if self._picks is not None:
            return self._picks(cfg)
        return tuple(str(v) for v in (cfg.value(key) for key in self.choices) if v != "none")

    def _known(self, name: str) -> str:
        if name not in self.names():
            raise ConfigError(unknown_choice(self.kind, name, self.names()))
        return name


REGISTRIES: list[Registry[Any]] = []  # every registry, in the order the packages created them


def unknown_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    """'key: 'value' is not one of a, b (did you mean b?)' for an unknown choice."""
    close = difflib.get_close_matches(value, choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{key}: '{value}' is not one of {', '.join(choices)}{hint}"


def load_plugins(spec: str) -> None:
    """Import the comma-separated modules or ``.py`` files of the ``plugins`` key (each once per process)."""
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.endswith(".py"):
            _load_file(Path(item).expanduser().resolve())
        else:
            try:
                importlib.import_module(item)
            except ImportError as exc:
                raise ConfigError(f"plugins: cannot import '{item}': {exc}") from None


def _load_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"plugins: no such file {path}")
    loaded = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    if any(Path(f).resolve() == path for f in loaded if f):
        return  # already imported (e.g. a test module that registers its own components)
    name = f"fl_backdoor_plugin_{path.stem}_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugins: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
