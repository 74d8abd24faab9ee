"""The one configuration schema of a run.

The same schema is read from Flower's run config (``[tool.flwr.app.config]`` and
``flwr run . --run-config``), from ``-c key=value`` options of the experiment
scripts, and from keyword arguments in Python.  Keys are kebab-case
(``num-clients``); the core's keys are also attributes of the config, as their
snake_case twins (``cfg.num_clients``).  Every value is a scalar (int, float, bool
or str) so that the whole config travels inside a Flower ``ConfigRecord``; lists are
written as comma-separated strings (``attacker-ids = "0,3"``) and round sets as
ranges (``attack-rounds = "11-20,25"``).

The schema is assembled: the core's keys are the fields below; every registered
component declares its own keys and the rules it needs where it registers
(``fl_backdoor.settings``), and a config reads them with ``Setting.of`` or
``value(key)``.  This module knows no component package by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import ConfigError, UserError
from .models import MODELS, model_input
from .registry import REGISTRIES, Registry, load_plugins, unknown_choice
from .settings import Rule, Setting, Value, declared, load_components
from .triggers import TRIGGERS, trigger_for, trigger_pieces

DATASETS = ("mnist", "fashion-mnist", "cifar10")
DEFAULT_MODEL = {"mnist": "mnist-cnn", "fashion-mnist": "fmnist-cnn", "cifar10": "vgg11"}
NUM_CLASSES = 10
ROLES = {
    "placement": "where or how a run executes, not what it computes (not part of a sweep run's identity)",
    "sweep": "set by a sweep for each of its runs",
    "split": "the server's validation set and the clients' pool (data cache)",
    "partition": "which client holds which data (data cache)",
    "test-set": "the test set (data cache)",
    "model": "the network",
    "federation": "rounds, sampling and aggregation",
    "training": "honest local training",
    "schedule": "which attackers poison when",
    "attack": "what the attackers do (reset to defaults in a clean pretraining)",
    "faults": "invalid replies sent by attackers",
    "cleansing": "the post-training defense (ignored by a training-only run's identity)",
    "evaluation": "what is measured when",
}
# the keys whose values name registered components, in the order `--choices` lists them
CHOICE_KEYS = ("model", "trigger", "aggregation", "adaptive-attack", "malformed-reply", "byzantine-attack", "defense")

__all__ = ["ConfigError", "ExperimentConfig", "UserError"]


def registry_choosing(key: str) -> Registry[Any]:
    """The registry whose entries the config key ``key`` names."""
    load_components()
    for registry in REGISTRIES:
        if key in registry.choices:
            return registry
    raise ConfigError(f"{key}: no installed component package provides its choices")


def registered(key: str) -> Any:
    """The choices of a core key, read from the registry that provides them when first needed."""
    def choices() -> tuple[str, ...]:
        registry = registry_choosing(key)
        return registry.choices[key](registry)
    return choices


def _opt(roles: str, default: Any, help: str, added: bool = False, **check: Any) -> Any:
    """A core key: its roles, default and meaning, and its check (Setting's choices, low, high, ...).

    ``added``: a key introduced after sweeps were recorded (see ExperimentConfig.added_defaults).
    """
    return field(default=default, metadata={"help": help, "roles": roles, "added": added, "check": check})


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a run: the core's keys as fields, every component's in ``components``."""

    # --- run ---------------------------------------------------------------
    seed: int = _opt("split test-set", 0, "Seed of everything random: partitions, model init, sampling, training.",
                     low=0)
    output_dir: str = _opt("placement sweep", "runs", "Directory under which each run gets its own directory.")
    run_name: str = _opt("placement sweep", "", "Name of the run directory; empty = <time>-<dataset>-<mode>.")
    resume: bool = _opt(
        "placement sweep", False, "Continue the run in output-dir/run-name from its last completed round or phase."
    )
    init_checkpoint: str = _opt(
        "placement sweep", "", "Start from this saved global model (.pt); rounds continue its numbering."
    )
    plugins: str = _opt(
        "placement",
        "",
        "Comma-separated modules or .py files imported first in every process; the "
        "components they register become valid choices (docs/extending.md).",
    )
    # --- data ----------------------------------------------------------------
    dataset: str = _opt("split test-set", "fashion-mnist", "mnist | fashion-mnist | cifar10.", choices=DATASETS)
    data_dir: str = _opt(
        "placement split test-set", "", "Dataset directory; empty = $FL_BACKDOOR_DATA_DIR, else ./data."
    )
    download: bool = _opt("placement split test-set", True, "Download a missing dataset (with checksum checks).")
    data_fraction: float = _opt("split", 1.0, "Use this stratified fraction of the training set (smaller = faster).",
                                low=0.0, high=1.0, low_open=True)
    validation_fraction: float = _opt(
        "split",
        0.01,
        "Share of the training set held out as the server's clean set (validation, centralized defenses).",
        low=0.0, high=0.5, low_open=True, high_open=True,
    )
    test_subset: int = _opt("test-set", 0, "Evaluate on this many test images (stratified); 0 = the whole test set.",
                            low=0)
    partition: str = _opt("partition", "k-labels", "iid | k-labels (the paper) | dirichlet (DBA).",
                          choices=("iid", "k-labels", "dirichlet"))
    labels_per_client: int = _opt("partition", 3, "K of the k-labels partition.", low=1, high=NUM_CLASSES)
    equal_size: bool = _opt("partition", True, "k-labels: every client gets the same number of samples.")
    dirichlet_alpha: float = _opt("partition", 0.5, "Concentration of the Dirichlet partition.", low=0.0,
                                  low_open=True)
    # --- model ---------------------------------------------------------------
    model: str = _opt("model", "", "A registered model (docs/extending.md); empty = the dataset's default.")
    model_widths: str = _opt(
        "model", "", "Conv widths, e.g. '8,16' (small) or '20,50' (large) for mnist-cnn; empty = model default."
    )
    # --- federation ------------------------------------------------------------
    num_clients: int = _opt("partition", 10, "Number of clients (data partitions).", low=1)
    num_rounds: int = _opt("federation", 60, "Training rounds run by this invocation.", low=0)
    fraction: float = _opt(
        "federation", 1.0, "Fraction of clients sampled per round (1.0 = all, the paper's simplification).",
        low=0.0, high=1.0, low_open=True,
    )
    aggregation: str = _opt(
        "federation", "paper", "paper: G += 1/n sum(L-G); dba: G += eta/n sum(L-G).", choices=registered("aggregation")
    )
    server_lr: float = _opt("federation", 1.0, "eta of the dba aggregation (the DBA reference uses 0.1).", low=0.0,
                            low_open=True)
    min_replies: int = _opt("federation", 1, "Skip a round (keep the model) when fewer valid replies arrive.", low=1)
    round_timeout: float = _opt("placement", 3600.0, "Seconds the server waits for the replies of one round "
                                                     "(inf = no limit).", low=0.0, low_open=True, infinite=True)
    # --- benign local training -------------------------------------------------
    lr: float = _opt("training", 0.2, "Client learning rate.", low=0.0, low_open=True)
    momentum: float = _opt("training", 0.0, "Client SGD momentum (the attacker uses it too).", low=0.0)
    weight_decay: float = _opt("training", 5e-4, "Client SGD weight decay.", low=0.0)
    batch_size: int = _opt("training", 64, "Client batch size.", low=1)
    local_epochs: int = _opt("training", 1, "Benign local epochs per round.", low=1)
    lr_decay: float = _opt(
        "training", 0.98, "Client and attacker learning rates are multiplied by this every round: "
                          "lr * decay^(round-1).", low=0.0, high=1.0, low_open=True,
    )
    last_conv_l2: float = _opt("training", 0.0, "L2 penalty (lambda) on the last conv layer during training (Fig. 10).",
                               low=0.0)
    # --- attack ------------------------------------------------------------------
    attack_mode: str = _opt(
        "partition",
        "victim",
        "victim: VL -> AL (the paper); all-to-one: every label -> AL (DBA).",
        choices=("victim", "all-to-one"),
    )
    num_attackers: int = _opt("partition", 1, "Attackers are clients 0..n-1 unless attacker-ids is set.", low=0)
    attacker_ids: str = _opt("partition", "", "Comma-separated attacker client ids (overrides num-attackers).")
    attack_rounds: str = _opt(
        "schedule",
        "all",
        "Rounds in which attackers poison, e.g. 'all', '11-20', '25,30'; one spec per "
        "attacker separated by '/' gives each its own rounds (DBA: '203/205/207/209').",
    )
    attackers_always_selected: bool = _opt(
        "schedule", True, "With fraction < 1, attackers are sampled in their attack rounds."
    )
    victim_label: int = _opt("partition", 9, "VL: the label whose triggered images should flip (victim mode).",
                             low=0, high=NUM_CLASSES - 1)
    attack_label: int = _opt("attack", 0, "AL: the label the trigger should produce.", low=0, high=NUM_CLASSES - 1)
    trigger: str = _opt(
        "attack", "pixel-1", "pixel-1/3/5/7/9 (BadNets patterns) or dba (four local pieces).",
        choices=registered("trigger"),
    )
    trigger_origin: str = _opt(
        "attack", "", "row,col of the trigger pattern's top-left pixel; empty = the pattern's own place."
    )
    dba_pieces: str = _opt(
        "attack", "", "DBA piece (0-3) held by each attacker, comma-separated; empty = attacker k holds k mod 4."
    )
    poison_per_batch: int = _opt("attack", 20, "all-to-one: poisoned samples in each batch of 'batch-size'.", low=0)
    gamma: float = _opt(
        "attack",
        2.0,
        "Model-replacement scale: the attacker submits G + gamma * (L - G); 1 <= gamma <= n/eta "
        "(n clients per round; n/eta = N in the paper's FedAvg, 100 in DBA's).",
        low=1.0,
    )
    poison_lr: float = _opt("attack", 0.2, "Attacker learning rate.", low=0.0, low_open=True)
    poison_epochs: int = _opt("attack", 4, "Attacker local epochs.", low=1)
    poison_lr_steps: bool = _opt("attack", False, "Attacker lr x0.1 at 20% and 80% of its epochs (DBA reference).")
    adaptive_attack: str = _opt(
        "attack", "none", "Adaptive attacker (Sec. VI-B; docs/attacks.md).", choices=registered("adaptive-attack")
    )
    byzantine_attack: str = _opt("attack", "none", "Colluding model poisoning (docs/attacks.md): the attackers' "
                                                   "replies become one malicious update.",
                                 choices=registered("byzantine-attack"), added=True)
    malformed_reply: str = _opt(
        "faults",
        "none",
        "Attackers send this kind of invalid reply (the docs' page on hostile clients); "
        "one kind per attacker separated by '/' gives each its own.",
    )
    # --- defense -------------------------------------------------------------------
    defense: str = _opt(
        "cleansing",
        "train-only",
        "A mode of the paper (train-only, fp, fp-aw, all, aw) or a comma-separated "
        "list of phases ('name?' runs a phase, reports it and undoes it): all = prune,aw?,finetune,aw.",
    )
    finetune_attack: str = _opt(
        "cleansing",
        "replace",
        "Attackers during fine-tuning: replace (poison and boost by gamma, as in "
        "training), poison (gamma 1) or benign (train honestly).",
        choices=("replace", "poison", "benign"),
    )
    # --- evaluation and compute ------------------------------------------------------
    eval_every: int = _opt("evaluation", 1, "Evaluate the global model every this many rounds (and after the last).",
                           low=1)
    eval_batch_size: int = _opt("placement", 1000, "Batch size of evaluation.", low=1)
    client_cpus: float = _opt("placement", 1.0, "CPUs reserved per simulated client (Ray actor).", low=0.0,
                              low_open=True)
    client_gpus: float = _opt("placement", 0.0, "GPUs reserved per simulated client.", low=0.0)
    device: str = _opt("placement", "auto", "cpu | cuda | auto (cuda when available).", choices=("auto", "cpu", "cuda"))
    # --- the components' keys: (key, value) in declaration order, every declared key present ----
    components: tuple[tuple[str, Value], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        given = dict(self.components)
        unknown = sorted(set(given) - set(declared()))
        if unknown:
            raise ConfigError(f"unknown config key '{unknown[0]}' (python -m fl_backdoor.config lists every key)")
        values = tuple((key, given.get(key, d.setting.default)) for key, d in declared().items())
        object.__setattr__(self, "components", values)

    @cached_property
    def _component_values(self) -> dict[str, Value]:
        return dict(self.components)

    # ------------------------------------------------------------------------------
    @classmethod
    def schema(cls) -> dict[str, Setting[Any]]:
        """Every key's declaration: the core's, then every registered component's, in order."""
        core = {s.key: s for s in CORE_SETTINGS}
        return {**core, **{key: d.setting for key, d in declared().items()}}

    @classmethod
    def keys(cls) -> list[str]:
        """All config keys in kebab-case."""
        return list(cls.schema())

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], *, validate: bool = True) -> ExperimentConfig:
        """Build a config from flat kebab-case (or snake_case) keys, coercing strings.

        The plugins come first, so that their keys are known.  Raises ConfigError for an
        unknown key or a value of the wrong type.
        """
        load_plugins(str(values.get("plugins", "")))
        schema = cls.schema()
        core: dict[str, Any] = {}
        components: dict[str, Value] = {}
        for raw_key, value in values.items():
            key = raw_key.replace("_", "-")
            if key not in schema:
                close = difflib.get_close_matches(key, list(schema), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "python -m fl_backdoor.config lists every key"
                raise ConfigError(f"unknown config key '{raw_key}' ({hint})")
            coerced = schema[key].coerce(value)
            if key in CORE_KEYS:
                core[key.replace("-", "_")] = coerced
            else:
                components[key] = coerced
        cfg = cls(**core, components=tuple(components.items()))
        if validate:
            cfg.validate()
        return cfg

    def value(self, key: str) -> Value:
        """The value of any key (kebab-case), the core's or a component's."""
        if key in CORE_KEYS:
            value: Value = getattr(self, key.replace("-", "_"))
            return value
        if key in self._component_values:
            return self._component_values[key]
        known = declared()  # a component registered after this config was made: its default
        if key not in known:
            raise ConfigError(f"unknown config key '{key}'")
        return known[key].setting.default

    def to_flat(self) -> dict[str, Any]:
        """The config as flat kebab-case keys with scalar values.

        A plugin's key is left out while at its default: the config then also reads in a process
        that has not loaded the plugin (a run that does not list it in ``plugins``).
        """
        flat: dict[str, Any] = {s.key: getattr(self, s.key.replace("-", "_")) for s in CORE_SETTINGS}
        for key, d in declared().items():
            value = self.value(key)
            if d.builtin or value != d.setting.default:
                flat[key] = value
        return flat

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A validated copy with some values changed (snake_case or kebab-case names)."""
        flat = self.to_flat()
        flat.update({k.replace("_", "-"): v for k, v in changes.items()})
        return ExperimentConfig.from_flat(flat)

    def digest(self, *keys: str) -> str:
        """A short stable hash of the given keys (all keys when none given)."""
        flat = self.to_flat()
        chosen = {k: flat[k] for k in (keys or flat)}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]

    # --- derived values -------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model to build (the dataset's default when 'model' is empty)."""
        return self.model or DEFAULT_MODEL[self.dataset]

    @property
    def widths(self) -> tuple[int, ...]:
        """Conv widths requested with model-widths (empty tuple = model default)."""
        return parse_int_list(self.model_widths, "model-widths")

    @property
    def image_size(self) -> int:
        """Height (= width) of the dataset's images."""
        return 32 if self.dataset == "cifar10" else 28

    @property
    def clients_per_round(self) -> int:
        """Number of clients sampled in a round."""
        return self.num_clients if self.fraction >= 1.0 else max(1, round(self.fraction * self.num_clients))

    @property
    def attackers(self) -> tuple[int, ...]:
        """Ids of the attackers."""
        if self.attacker_ids.strip():
            return parse_int_list(self.attacker_ids, "attacker-ids")
        return tuple(range(self.num_attackers))

    def attacks_in_round(self, client_id: int, server_round: int) -> bool:
        """Whether this client is an attacker that poisons in this (absolute) training round."""
        if client_id not in self.attackers:
            return False
        return round_in_spec(server_round, self.attack_spec(client_id))

    def attack_spec(self, attacker: int) -> str:
        """The attack-rounds spec of one attacker (its own '/'-separated part, or the shared one)."""
        specs = self.attack_rounds.split("/")
        return specs[self.attackers.index(attacker)] if len(specs) > 1 else specs[0]

    def malformed_kind(self, client_id: int) -> str:
        """The kind of invalid reply this client sends ('none' for benign clients)."""
        if client_id not in self.attackers:
            return "none"
        kinds = self.malformed_reply.split("/")
        return kinds[self.attackers.index(client_id)] if len(kinds) > 1 else kinds[0]

    def dba_piece_of(self, client_id: int) -> int:
        """The piece of a distributed trigger held by an attacker (default: attacker k holds k mod pieces)."""
        pieces = parse_int_list(self.dba_pieces, "dba-pieces")
        k = self.attackers.index(client_id)
        return pieces[k] if pieces else k % trigger_pieces(self.trigger)

    @property
    def server_eta(self) -> float:
        """The server learning rate of the aggregation (1 unless the aggregator takes server-lr)."""
        uses_lr = registry_choosing("aggregation").meta(self.aggregation).get("server_lr")
        return self.server_lr if uses_lr else 1.0

    @classmethod
    def added_defaults(cls) -> dict[str, Any]:
        """Keys added after sweeps were recorded, with their defaults: a sweep run's identity includes
        them only when set away from the default, so earlier runs keep their directory names."""
        return {key: s.default for key, s in cls.schema().items() if s.added}

    @classmethod
    def keys_with_role(cls, role: str) -> tuple[str, ...]:
        """The kebab-case keys that declare a role (see ROLES)."""
        if role not in ROLES:
            raise ValueError(f"unknown role '{role}'")
        return tuple(key for key, s in cls.schema().items() if role in s.role_names)

    # --- validation -------------------------------------------------------------------
    def checked_rules(self) -> list[tuple[Rule, str]]:
        """The rules that apply to this config: the core's, then those of every component it picks,
        each with what it is declared by."""
        rules = [(rule, "core") for rule in CORE_RULES]
        for registry in REGISTRIES:
            for name in registry.picked(self):
                rules += [(rule, f"{registry.kind} {name}") for rule in registry.rules(name)]
        return rules

    def validate(self) -> None:
        """Check every value, then every rule between keys; raise ConfigError naming the first bad key.

        The plugins are imported first, so that the components they register are valid choices.
        """
        load_plugins(self.plugins)
        for key, setting in self.schema().items():
            problem = setting.problem(self.value(key))
            if problem:
                raise ConfigError(problem)
        for rule, _ in self.checked_rules():
            message = None if rule.warning else rule.message(self)
            if message:
                raise ConfigError(message)

    def warnings(self) -> list[str]:
        """One line per combination that acts only sometimes (the rules declared as warnings)."""
        found = (rule.message(self) for rule, _ in self.checked_rules() if rule.warning)
        return [message for message in found if message]


CORE_SETTINGS: tuple[Setting[Any], ...] = tuple(
    Setting(f.name.replace("_", "-"), f.default, f.metadata["help"], f.metadata["roles"], added=f.metadata["added"],
            **f.metadata["check"])
    for f in dataclasses.fields(ExperimentConfig) if f.name != "components"
)
CORE_KEYS = frozenset(s.key for s in CORE_SETTINGS)


# --- the core's rules between keys ------------------------------------------------------------
def _model_fits(cfg: ExperimentConfig) -> str | None:
    if cfg.model and cfg.model not in MODELS:
        return unknown_choice("model", cfg.model, MODELS.names()).partition(": ")[2]
    channels, size = model_input(cfg.model_name)
    data_channels = 3 if cfg.dataset == "cifar10" else 1
    if (channels, size) != (data_channels, cfg.image_size):
        return (f"'{cfg.model_name}' takes {channels}x{size}x{size} inputs, "
                f"{cfg.dataset} images are {data_channels}x{cfg.image_size}x{cfg.image_size}")
    cfg.widths  # noqa: B018 - parses model-widths
    return None


def _attackers_exist(cfg: ExperimentConfig) -> str | None:
    if not cfg.attacker_ids.strip() and cfg.num_attackers > cfg.num_clients:
        return f"{cfg.num_attackers} attackers but only {cfg.num_clients} clients"
    return None


def _attacker_ids(cfg: ExperimentConfig) -> str | None:
    attackers = cfg.attackers
    if len(set(attackers)) != len(attackers):
        return f"repeated ids in '{cfg.attacker_ids}'"
    bad = [a for a in attackers if not 0 <= a < cfg.num_clients]
    return f"ids {bad} out of range 0..{cfg.num_clients - 1}" if bad else None


def _attack_rounds(cfg: ExperimentConfig) -> str | None:
    specs = cfg.attack_rounds.split("/")
    for spec in specs:
        parse_round_spec(spec, "attack-rounds")
    if len(specs) not in (1, len(cfg.attackers)):
        return f"{len(specs)} '/'-separated specs for {len(cfg.attackers)} attackers"
    return None


def _labels_differ(cfg: ExperimentConfig) -> str | None:
    if cfg.attack_mode == "victim" and cfg.attackers and cfg.victim_label == cfg.attack_label:
        return "must differ from victim-label"
    return None


def _gamma_bound(cfg: ExperimentConfig) -> str | None:
    replace_at = cfg.clients_per_round / cfg.server_eta
    if cfg.gamma <= max(replace_at, 1.0) + 1e-9:
        return None
    return (f"must be in [1, n/eta={replace_at:g}] (n={cfg.clients_per_round} clients per round; "
            f"gamma = n/eta replaces the global model), got {cfg.gamma}")


def _poison_per_batch(cfg: ExperimentConfig) -> str | None:
    if cfg.poison_per_batch <= cfg.batch_size:
        return None
    return f"must be in 0..batch-size ({cfg.batch_size}), got {cfg.poison_per_batch}"


def _dba_pieces(cfg: ExperimentConfig) -> str | None:
    pieces, count = parse_int_list(cfg.dba_pieces, "dba-pieces"), trigger_pieces(cfg.trigger)
    if not pieces:
        return None
    if count == 0:
        return f"trigger '{cfg.trigger}' is not distributed in pieces"
    if len(pieces) != len(cfg.attackers):
        return f"{len(pieces)} pieces for {len(cfg.attackers)} attackers"
    return None if all(0 <= p < count for p in pieces) else f"pieces must be 0..{count - 1}, got {list(pieces)}"


def _trigger_fits(cfg: ExperimentConfig) -> str | None:
    origin = parse_int_list(cfg.trigger_origin, "trigger-origin")
    if len(origin) not in (0, 2):
        return f"expected 'row,col', got '{cfg.trigger_origin}'"
    try:
        trigger = trigger_for(cfg.trigger, cfg.image_size, origin, config=cfg.to_flat())
    except ValueError as exc:
        raise ConfigError(f"trigger: {exc}") from None
    if trigger.semantic:
        if cfg.attack_mode != "victim":
            raise ConfigError(f"attack-mode: trigger '{cfg.trigger}' relabels the victim images that have its "
                              f"feature: it needs victim mode")
        if cfg.dataset != "cifar10" and TRIGGERS.meta(cfg.trigger).get("colour"):
            raise ConfigError(f"trigger: '{cfg.trigger}' needs colour images (cifar10)")
    outside = trigger.outside(cfg.image_size)
    if outside:
        return (f"trigger '{cfg.trigger}' puts pixels {outside[:3]} outside the "
                f"{cfg.image_size}x{cfg.image_size} image")
    return None


def _resume(cfg: ExperimentConfig) -> str | None:
    if cfg.resume and cfg.init_checkpoint:
        return "cannot be combined with init-checkpoint"
    return "needs run-name (the run directory to continue)" if cfg.resume and not cfg.run_name else None


def _run_name(cfg: ExperimentConfig) -> str | None:
    if cfg.run_name in ("", Path(cfg.run_name).name) and cfg.run_name not in (".", ".."):
        return None
    return f"'{cfg.run_name}' is not a single directory name inside output-dir"


def _min_replies(cfg: ExperimentConfig) -> str | None:
    if cfg.min_replies <= cfg.clients_per_round:
        return None
    return (f"{cfg.min_replies} valid replies needed, but only {cfg.clients_per_round} clients take part in a round: "
            f"every round would be skipped")


def _attacks_need_attackers(cfg: ExperimentConfig) -> str | None:
    chosen = [f"{key} '{cfg.value(key)}'" for key in ("adaptive-attack", "byzantine-attack", "malformed-reply")
              if cfg.value(key) != "none"]
    if cfg.attackers or not chosen:
        return None
    return f"{' and '.join(chosen)} with no attackers (num-attackers 0, attacker-ids empty) never acts"


def _attack_rounds_reached(cfg: ExperimentConfig) -> str | None:
    if cfg.init_checkpoint or cfg.resume or cfg.num_rounds == 0 or not cfg.attackers:
        return None  # rounds continue a checkpoint's numbering, or nothing trains
    idle = [a for a in cfg.attackers if cfg.attack_spec(a).strip().lower() != "none"
            and not any(cfg.attacks_in_round(a, r) for r in range(1, cfg.num_rounds + 1))]
    if not idle:
        return None
    who = "no attacker" if len(idle) == len(cfg.attackers) else f"attacker(s) {idle}"
    return f"'{cfg.attack_rounds}' gives {who} a round among this run's rounds 1..{cfg.num_rounds}"


CORE_RULES: tuple[Rule, ...] = (
    Rule("model", "the model is registered and takes the dataset's image size and channels", _model_fits),
    Rule("num-attackers", "num-attackers <= num-clients", _attackers_exist),
    Rule("attacker-ids", "distinct ids in 0..num-clients - 1", _attacker_ids),
    Rule("attack-rounds", "one spec, or one per attacker separated by '/'", _attack_rounds),
    Rule("attack-label", "differs from victim-label in victim mode", _labels_differ),
    Rule("gamma", "gamma <= n/eta (n clients per round, eta server-lr where the aggregation scales by it)",
         _gamma_bound),
    Rule("poison-per-batch", "poison-per-batch <= batch-size", _poison_per_batch),
    Rule("dba-pieces", "one piece of a distributed trigger per attacker", _dba_pieces),
    Rule("trigger-origin", "the trigger lies inside the image (semantic triggers: victim mode)", _trigger_fits),
    Rule("resume", "needs run-name; not with init-checkpoint", _resume),
    Rule("run-name", "one directory name inside output-dir", _run_name),
    Rule("min-replies", "min-replies <= clients per round (num-clients x fraction)", _min_replies),
    Rule("num-attackers", "adaptive-attack, byzantine-attack and malformed-reply need attackers",
         _attacks_need_attackers, warning=True),
    Rule("attack-rounds", "some attack round falls in rounds 1..num-rounds (not checked with init-checkpoint)",
         _attack_rounds_reached, warning=True),
)


def parse_int_list(text: str, key: str) -> tuple[int, ...]:
    """Parse '1,2, 3' into (1, 2, 3); '' gives ()."""
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{key}: expected comma-separated integers, got '{text}'") from None


def parse_round_spec(text: str, key: str) -> list[tuple[int, int]] | None:
    """Parse 'all' (None) or '1-5,9,12-14' into inclusive (start, end) ranges."""
    text = text.strip().lower()
    if text == "all":
        return None
    if text in ("", "none"):
        return []
    ranges = []
    for part in text.split(","):
        bounds = part.strip().split("-")
        try:
            start, end = (int(bounds[0]), int(bounds[-1])) if len(bounds) <= 2 else (None, None)
        except ValueError:
            start = end = None
        if start is None or end is None or start < 1 or end < start:
            raise ConfigError(f"{key}: '{part.strip()}' is not a round or range like 11-20 (rounds start at 1)")
        ranges.append((start, end))
    return ranges


def round_in_spec(server_round: int, text: str) -> bool:
    """Whether a round falls in a round spec ('all', 'none', '1-5,9')."""
    ranges = parse_round_spec(text, "rounds")
    return ranges is None or any(a <= server_round <= b for a, b in ranges)


_SEVERAL_PAIRS = re.compile(r"\s[A-Za-z][A-Za-z0-9_-]*=")


def config_from_args(overrides: list[str], base: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Build a config from 'key=value' strings (one each, split on the first '=') on top of a base mapping.

    A value may hold spaces; quotes around it are dropped.
    """
    values = dict(base or {})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"'{item}' is not key=value")
        key, value = item.split("=", 1)
        if _SEVERAL_PAIRS.search(value):
            raise ConfigError(f"'{item}': one key=value per -c (repeat -c for each key)")
        values[key.strip()] = value.strip().strip("'\"")
    return ExperimentConfig.from_flat(values)


def toml_value(value: Any) -> str:
    """A config value written as TOML (as pyproject's table and `flwr run --run-config` take it)."""
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def builtin_schema() -> dict[str, Setting[Any]]:
    """The keys of the core, then those of the project's own components grouped by who declares them (a plugin's
    keys left out)."""
    shipped = sorted((min(d.owners), key) for key, d in declared().items() if d.builtin)
    return {**{s.key: s for s in CORE_SETTINGS}, **{key: declared()[key].setting for _, key in shipped}}


def toml_table() -> str:
    """The schema's defaults as the body of pyproject's [tool.flwr.app.config] table."""
    return "\n".join(f"{key} = {toml_value(s.default)}" for key, s in builtin_schema().items())


def markdown_reference() -> str:
    """The configuration reference (markdown): every key with its default, allowed values, meaning and owner,
    then every rule between keys, all read from the declarations that validation uses."""
    owners = {key: ", ".join(d.owners) for key, d in declared().items()}
    rows = ["| key | default | allowed | meaning | declared by |", "|---|---|---|---|---|"]
    for key, s in builtin_schema().items():
        meaning = s.help.replace("|", "/")
        allowed = s.allowed()
        if callable(s.choices):  # the project's own components only, not those a plugin registered
            registry = registry_choosing(key)
            names = [n for n in s.choice_names() if n not in registry]  # 'none', the paper's modes
            names += sorted(n for n in s.choice_names() if n in registry and registry.builtin(n))
            allowed = "one of " + ", ".join(f"`{n}`" for n in names)
        rows.append(f"| `{key}` | `{toml_value(s.default)}` | {allowed} | {meaning} | {owners.get(key, 'core')} |")
    rules = ["| key | applies when | what must hold | if not |", "|---|---|---|---|"]
    picked = [("always", rule) for rule in CORE_RULES]
    for registry in sorted(REGISTRIES, key=lambda r: r.kind):
        for name in sorted(registry.names()):
            if registry.builtin(name):
                picked += [(f"{registry.kind} `{name}` is used", rule) for rule in registry.rules(name)]
    for when, rule in picked:
        rules.append(f"| `{rule.key}` | {when} | {rule.text.replace('|', '/')} | "
                     f"{'warning' if rule.warning else 'error'} |")
    return "\n".join(rows) + "\n\nRules between keys, checked before anything runs:\n\n" + "\n".join(rules) + "\n"


def sync_pyproject(path: str = "pyproject.toml") -> None:
    """Rewrite the body of [tool.flwr.app.config] in pyproject.toml from the schema."""
    text = Path(path).read_text()
    head, marker, rest = text.partition("[tool.flwr.app.config]\n")
    if not marker:
        raise SystemExit(f"{path} has no [tool.flwr.app.config] table")
    tail = rest[rest.index("\n[") + 1 :] if "\n[" in rest else ""
    Path(path).write_text(head + marker + toml_table() + "\n" + ("\n" + tail if tail else ""))


REFERENCE_START, REFERENCE_END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def sync_reference(path: str = "docs/configuration.md") -> None:
    """Replace the generated part of the docs' configuration page with markdown_reference()."""
    text = Path(path).read_text()
    head, _, rest = text.partition(REFERENCE_START + "\n")
    _, _, tail = rest.partition(REFERENCE_END)
    Path(path).write_text(head + REFERENCE_START + "\n" + markdown_reference() + REFERENCE_END + tail)


def registered_choices() -> dict[str, tuple[str, ...]]:
    """Every key whose values come from a registry, with the names registered now."""
    load_components()
    found = {key: registry.choices[key](registry) for registry in REGISTRIES for key in registry.choices}
    return {key: found[key] for key in (*CHOICE_KEYS, *sorted(set(found) - set(CHOICE_KEYS))) if key in found}


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--choices"]:
        for key, names in registered_choices().items():
            print(f"{key}: {', '.join(names)}")
    elif sys.argv[1:] == ["--sync-docs"]:
        sync_pyproject()
        sync_reference()
    elif sys.argv[1:] == ["--markdown"]:
        print(markdown_reference(), end="")
    else:
        print(toml_table())
