"""The one configuration schema of a run.

The same schema is read from Flower's run config (``[tool.flwr.app.config]`` and
``flwr run . --run-config``), from ``-c key=value`` options of the experiment
scripts, and from keyword arguments in Python.  Keys are kebab-case
(``num-clients``); the Python attributes are their snake_case twins
(``num_clients``).  Every value is a scalar (int, float, bool or str) so that
the whole config travels inside a Flower ``ConfigRecord``; lists are written as
comma-separated strings (``attacker-ids = "0,3"``) and round sets as ranges
(``attack-rounds = "11-20,25"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, UserError
from .registry import Registry, load_plugins, unknown_choice

DATASETS = ("mnist", "fashion-mnist", "cifar10")
DEFAULT_MODEL = {"mnist": "mnist-cnn", "fashion-mnist": "fmnist-cnn", "cifar10": "vgg11"}
PARTITIONS = ("iid", "k-labels", "dirichlet")
ATTACK_MODES = ("victim", "all-to-one")
PRUNING_METHODS = ("rap", "mvp")
PRUNING_ACCURACY_SOURCES = ("server", "clients")
PRUNING_STOPS = ("per-step", "cumulative")
FINETUNE_KEEPS = ("last", "best")
FINETUNE_ATTACKS = ("replace", "poison", "benign")
AW_STATS = ("all", "kept")
AW_KEEPS = ("crossing", "passing")
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

__all__ = ["ConfigError", "ExperimentConfig", "UserError"]


def registry(module: str, name: str) -> Registry[Any]:
    """A component registry, imported when first needed (the components import this module)."""
    reg: Registry[Any] = getattr(importlib.import_module(module), name)
    return reg


def _registered(
    module: str, name: str, role: str | None = None, extra: tuple[str, ...] = ()
) -> Callable[[], tuple[str, ...]]:
    """Choices read from a registry (optionally only entries of one role), plus fixed extras."""

    def choices() -> tuple[str, ...]:
        reg = registry(module, name)
        return extra + tuple(n for n in reg.names() if role is None or reg.meta(n).get("role") == role)

    return choices


MODEL_CHOICES = _registered("fl_backdoor.models", "MODELS")
TRIGGER_CHOICES = _registered("fl_backdoor.triggers", "TRIGGERS")
AGGREGATION_CHOICES = _registered("server_strategies.aggregators", "AGGREGATORS")
ADAPTIVE_CHOICES = _registered("clients.behaviours", "BEHAVIOURS", "adaptive", ("none",))
MALFORMED_CHOICES = _registered("clients.behaviours", "BEHAVIOURS", "malformed", ("none",))
BYZANTINE_CHOICES = _registered("server_strategies.byzantine", "BYZANTINE", None, ("none",))


def _opt(roles: str, default: Any, help: str, added: bool = False, **kw: Any) -> Any:
    # added: a key introduced after sweeps were recorded (see ExperimentConfig.added_defaults)
    return field(default=default, metadata={"help": help, "roles": tuple(roles.split()), "added": added, **kw})


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a run: data, federation, attack, defense and output."""

    # --- run ---------------------------------------------------------------
    seed: int = _opt("split test-set", 0, "Seed of everything random: partitions, model init, sampling, training.")
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
        "components they register become valid choices (README: Extending).",
    )
    # --- data ----------------------------------------------------------------
    dataset: str = _opt("split test-set", "fashion-mnist", "mnist | fashion-mnist | cifar10.", choices=DATASETS)
    data_dir: str = _opt(
        "placement split test-set", "", "Dataset directory; empty = $FL_BACKDOOR_DATA_DIR, else ./data."
    )
    download: bool = _opt("placement split test-set", True, "Download a missing dataset (with checksum checks).")
    data_fraction: float = _opt("split", 1.0, "Use this stratified fraction of the training set (smaller = faster).")
    validation_fraction: float = _opt(
        "split",
        0.01,
        "Share of the training set held out as the server's clean set (validation, centralized defenses).",
    )
    test_subset: int = _opt("test-set", 0, "Evaluate on this many test images (stratified); 0 = the whole test set.")
    partition: str = _opt("partition", "k-labels", "iid | k-labels (the paper) | dirichlet (DBA).", choices=PARTITIONS)
    labels_per_client: int = _opt("partition", 3, "K of the k-labels partition.")
    equal_size: bool = _opt("partition", True, "k-labels: every client gets the same number of samples.")
    dirichlet_alpha: float = _opt("partition", 0.5, "Concentration of the Dirichlet partition.")
    # --- model ---------------------------------------------------------------
    model: str = _opt("model", "", "A registered model (fl_backdoor/models); empty = the dataset's default.")
    model_widths: str = _opt(
        "model", "", "Conv widths, e.g. '8,16' (small) or '20,50' (large) for mnist-cnn; empty = model default."
    )
    # --- federation ------------------------------------------------------------
    num_clients: int = _opt("partition", 10, "Number of clients (data partitions).")
    num_rounds: int = _opt("federation", 60, "Training rounds run by this invocation.")
    fraction: float = _opt(
        "federation", 1.0, "Fraction of clients sampled per round (1.0 = all, the paper's simplification)."
    )
    aggregation: str = _opt(
        "federation", "paper", "paper: G += 1/n sum(L-G); dba: G += eta/n sum(L-G).", choices=AGGREGATION_CHOICES
    )
    server_lr: float = _opt("federation", 1.0, "eta of the dba aggregation (the DBA reference uses 0.1).")
    robust_f: int = _opt("federation", 1, "Malicious clients the Byzantine-robust rules (krum, multikrum, bulyan) "
                                          "assume: the defender's guess, never read from the attack settings.",
                         added=True)
    multikrum_select: int = _opt("federation", 0, "multikrum: models averaged (m); 0 = n - f.", added=True)
    trim_fraction: float = _opt("federation", 0.2, "trimmed-mean: fraction cut at each end of every coordinate "
                                                   "(Flower's FedTrimmedAvg beta).", added=True)
    clip_norm: float = _opt("federation", 0.0, "norm-clip: L2 bound on each client's update; 0 = the round's "
                                               "median update norm.", added=True)
    flame_lambda: float = _opt("federation", 0.001, "flame: Gaussian noise sigma = lambda x the median update "
                                                    "norm (FLAME's value for image classification).", added=True)
    foolsgold_features: str = _opt("federation", "all", "foolsgold: the update histories compared: all (the "
                                                        "reference code) or output (the last layer's weights).",
                                   choices=("all", "output"), added=True)
    foolsgold_confidence: float = _opt("federation", 1.0, "foolsgold: kappa of the logit (the paper's 1).",
                                       added=True)
    dp_clip_norm: float = _opt("federation", 3.0, "dp-fixed-clip: L2 bound C on each update (Sun et al. 2019's "
                                                  "norm bound 3).", added=True)
    dp_noise_multiplier: float = _opt("federation", 0.25, "dp-fixed-clip: z; noise sigma = z * C / clients per "
                                                          "round (Sun et al.'s weak DP: 0.025 at C 3, 30 clients).",
                                      added=True)
    dp_delta: float = _opt("federation", 1e-5, "dp-fixed-clip: the delta at which epsilon is reported.", added=True)
    min_replies: int = _opt("federation", 1, "Skip a round (keep the model) when fewer valid replies arrive.")
    round_timeout: float = _opt("placement", 3600.0, "Seconds the server waits for the replies of one round.")
    # --- benign local training -------------------------------------------------
    lr: float = _opt("training", 0.2, "Client learning rate.")
    momentum: float = _opt("training", 0.0, "Client SGD momentum (the attacker uses it too).")
    weight_decay: float = _opt("training", 5e-4, "Client SGD weight decay.")
    batch_size: int = _opt("training", 64, "Client batch size.")
    local_epochs: int = _opt("training", 1, "Benign local epochs per round.")
    lr_decay: float = _opt(
        "training", 0.98, "Client and attacker learning rates are multiplied by this every round: lr * decay^(round-1)."
    )
    last_conv_l2: float = _opt("training", 0.0, "L2 penalty (lambda) on the last conv layer during training (Fig. 10).")
    # --- attack ------------------------------------------------------------------
    attack_mode: str = _opt(
        "partition",
        "victim",
        "victim: VL -> AL (the paper); all-to-one: every label -> AL (DBA).",
        choices=ATTACK_MODES,
    )
    num_attackers: int = _opt("partition", 1, "Attackers are clients 0..n-1 unless attacker-ids is set.")
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
    victim_label: int = _opt("partition", 9, "VL: the label whose triggered images should flip (victim mode).")
    attack_label: int = _opt("attack", 0, "AL: the label the trigger should produce.")
    trigger: str = _opt(
        "attack", "pixel-1", "pixel-1/3/5/7/9 (BadNets patterns) or dba (four local pieces).", choices=TRIGGER_CHOICES
    )
    blend_alpha: float = _opt("attack", 0.2, "blend trigger: weight of the noise pattern (Chen et al.'s 0.2).",
                              added=True)
    blend_seed: int = _opt("attack", 0, "blend trigger: seed of its noise pattern.", added=True)
    semantic_margin: float = _opt("attack", 0.02, "semantic-green: how far the mean green must exceed the mean "
                                                  "red and blue.", added=True)
    trigger_origin: str = _opt(
        "attack", "", "row,col of the trigger pattern's top-left pixel; empty = the pattern's own place."
    )
    dba_pieces: str = _opt(
        "attack", "", "DBA piece (0-3) held by each attacker, comma-separated; empty = attacker k holds k mod 4."
    )
    poison_per_batch: int = _opt("attack", 20, "all-to-one: poisoned samples in each batch of 'batch-size'.")
    gamma: float = _opt(
        "attack",
        2.0,
        "Model-replacement scale: the attacker submits G + gamma * (L - G); 1 <= gamma <= n/eta "
        "(n clients per round; n/eta = N in the paper's FedAvg, 100 in DBA's).",
    )
    poison_lr: float = _opt("attack", 0.2, "Attacker learning rate.")
    poison_epochs: int = _opt("attack", 4, "Attacker local epochs.")
    poison_lr_steps: bool = _opt("attack", False, "Attacker lr x0.1 at 20% and 80% of its epochs (DBA reference).")
    adaptive_attack: str = _opt(
        "attack", "none", "Adaptive attacker (Sec. VI-B; clients/behaviours).", choices=ADAPTIVE_CHOICES
    )
    adaptive_delta: float = _opt("attack", 3.0, "Delta within which the aw-aware attacker clips its last conv layer.")
    byzantine_attack: str = _opt("attack", "none", "Colluding model poisoning (server_strategies/byzantine): the "
                                                   "attackers' replies become one malicious update.",
                                 choices=BYZANTINE_CHOICES, added=True)
    byzantine_knowledge: str = _opt("attack", "omniscient", "What the Byzantine attackers know: omniscient (every "
                                                            "client's honest update) or colluders (their own).",
                                    choices=("omniscient", "colluders"), added=True)
    alie_z: float = _opt("attack", 0.0, "alie: z; 0 = the paper's z_max from n and m.", added=True)
    ipm_epsilon: float = _opt("attack", 0.1, "ipm: epsilon of -epsilon x the honest mean.", added=True)
    minmax_gamma: float = _opt("attack", 10.0, "minmax: gamma_init of the paper's search.", added=True)
    neurotoxin_ratio: float = _opt("attack", 0.99, "neurotoxin: share of coordinates the attacker may change, "
                                                   "those the last global update moved least (the reference's "
                                                   "0.99).", added=True)
    pgd_norm: float = _opt("attack", 0.0, "pgd: L2 bound on the attacker's submitted update; 0 = the norm of its "
                                          "own honest update of the round.", added=True)
    pgd_every: int = _opt("attack", 10, "pgd: optimiser steps between projections (Wang et al.'s 10).", added=True)
    oracle_checkpoint: str = _opt(
        "attack", "", "pruning-aware-oracle: checkpoint whose pruning mask the attacker is given."
    )
    malformed_reply: str = _opt(
        "faults",
        "none",
        "Attackers send this kind of invalid reply (clients/behaviours/malformed.py); "
        "one kind per attacker separated by '/' gives each its own.",
    )
    # --- defense -------------------------------------------------------------------
    defense: str = _opt(
        "cleansing",
        "train-only",
        "A mode of the paper (train-only, fp, fp-aw, all, aw) or a comma-separated "
        "list of phases (server_strategies/phases; 'name?' runs a phase, reports it and "
        "undoes it): all = prune,aw?,finetune,aw.",
    )
    pruning_method: str = _opt(
        "cleansing", "rap", "rap: aggregate ranks; mvp: majority votes.", choices=PRUNING_METHODS
    )
    pruning_layer: str = _opt(
        "cleansing", "", "Layer whose neurons are ranked and pruned; empty = the model's last conv layer."
    )
    mvp_rate: float = _opt("cleansing", 0.5, "p of MVP: each client votes to prune its p*P least active neurons.")
    pruning_accuracy: str = _opt(
        "cleansing",
        "server",
        "Accuracy for the pruning stop: server validation set or client reports.",
        choices=PRUNING_ACCURACY_SOURCES,
    )
    pruning_max_drop: float = _opt(
        "cleansing", 0.01, "Pruning stops when validation accuracy drops more than this (see pruning-stop)."
    )
    pruning_stop: str = _opt(
        "cleansing",
        "per-step",
        "per-step: stop before the count whose accuracy drops more than pruning-max-drop "
        "below the previous count's (Sec. V-C); cumulative: below the unpruned model's.",
        choices=PRUNING_STOPS,
    )
    finetune_rounds: int = _opt("cleansing", 10, "Maximum federated fine-tuning rounds.")
    finetune_patience: int = _opt(
        "cleansing",
        2,
        "Stop fine-tuning after this many rounds without improving on the best accuracy "
        "so far (the pruned model's included).",
    )
    finetune_keep: str = _opt(
        "cleansing",
        "last",
        "Model fine-tuning hands to AW: last (the model when it stops, Algorithm 1) or "
        "best (best validation accuracy, the pruned model of round 0 included).",
        choices=FINETUNE_KEEPS,
    )
    finetune_attack: str = _opt(
        "cleansing",
        "replace",
        "Attackers during fine-tuning: replace (poison and boost by gamma, as in "
        "training), poison (gamma 1) or benign (train honestly).",
        choices=FINETUNE_ATTACKS,
    )
    sam_rho: float = _opt("cleansing", 2.0, "finetune-sam: radius rho of the weight perturbation (FT-SAM's "
                                            "BackdoorBench setting, 2.0, with adaptive SAM).", added=True)
    sam_adaptive: bool = _opt("cleansing", True, "finetune-sam: adaptive SAM (perturbation scaled by |w|, "
                                                 "Kwon et al. 2021) as FT-SAM uses; false = plain SAM.", added=True)
    clp_u: float = _opt("cleansing", 3.0, "clp: prune the channels whose Lipschitz upper bound exceeds "
                                          "mean + u std of their layer (3, as BackdoorBench's CLP configuration).",
                         added=True)
    ibau_rounds: int = _opt("cleansing", 5, "ibau, ibau-server: I-BAU rounds (the reference code's 5); federated, "
                                            "one round is one FedAvg round of every client's local I-BAU round.",
                            added=True)
    ibau_norm: float = _opt("cleansing", 10.0, "ibau: L2 bound on the universal perturbation (the reference's 10).",
                            added=True)
    ibau_lr: float = _opt("cleansing", 1e-4, "ibau: Adam learning rate of the unlearning steps (BackdoorBench's "
                                             "I-BAU configuration).", added=True)
    rnp_threshold: float = _opt("cleansing", 0.7, "rnp, rnp-server: prune the channels whose recovered mask "
                                                  "(federated: the clients' average) is at most this "
                                                  "(BackdoorBench's RNP pruning_number).", added=True)
    aw_delta: float = _opt(
        "cleansing", 0.0, "Fixed AW threshold Delta (the paper's fixed value is 3); 0 = adaptive search."
    )
    aw_delta_start: float = _opt("cleansing", 10.0, "Adaptive AW: first Delta.")
    aw_delta_step: float = _opt("cleansing", 0.25, "Adaptive AW: Delta decrement.")
    aw_delta_min: float = _opt("cleansing", 0.5, "Adaptive AW: smallest Delta tried.")
    aw_max_drop: float = _opt(
        "cleansing", 0.01, "Adaptive AW: keep shrinking Delta while validation accuracy stays within this of its start."
    )
    aw_keep: str = _opt(
        "cleansing",
        "crossing",
        "Adaptive AW: keep the Delta whose accuracy crossed the threshold (Algorithm 1) or the last one that passed.",
        choices=AW_KEEPS,
    )
    aw_stats: str = _opt(
        "cleansing",
        "all",
        "mu and sigma of AW over all weights of the layer, a pruned neuron's counted as zero "
        "(Sec. IV-C), or over the kept neurons' weights only.",
        choices=AW_STATS,
    )
    curve_points: int = _opt(
        "cleansing", 16, "Points of the pruning (Fig. 5) and Delta (Fig. 6) curves; 0 = no curves."
    )
    # --- evaluation and compute ------------------------------------------------------
    eval_every: int = _opt("evaluation", 1, "Evaluate the global model every this many rounds (and after the last).")
    eval_batch_size: int = _opt("placement", 1000, "Batch size of evaluation.")
    client_cpus: float = _opt("placement", 1.0, "CPUs reserved per simulated client (Ray actor).")
    client_gpus: float = _opt("placement", 0.0, "GPUs reserved per simulated client.")
    device: str = _opt("placement", "auto", "cpu | cuda | auto (cuda when available).")

    # ------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """All config keys in kebab-case."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(cls)]

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], *, validate: bool = True) -> ExperimentConfig:
        """Build a config from flat kebab-case (or snake_case) keys, coercing strings.

        Raises ConfigError for an unknown key or a value of the wrong type.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in fields:
                close = difflib.get_close_matches(key.replace("_", "-"), cls.keys(), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "python -m fl_backdoor.config lists every key"
                raise ConfigError(f"unknown config key '{key}' ({hint})")
            kwargs[name] = _coerce(key, value, type(fields[name].default))
        cfg = cls(**kwargs)
        if validate:
            cfg.validate()
        return cfg

    def to_flat(self) -> dict[str, Any]:
        """The config as flat kebab-case keys with scalar values."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A validated copy with some values changed (snake_case names)."""
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
    def clients_per_round(self) -> int:
        """Number of clients sampled in a round."""
        return self.num_clients if self.fraction >= 1.0 else max(1, round(self.fraction * self.num_clients))

    @property
    def attackers(self) -> tuple[int, ...]:
        """Ids of the attacking clients."""
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
        from .triggers import trigger_pieces

        pieces = parse_int_list(self.dba_pieces, "dba-pieces")
        k = self.attackers.index(client_id)
        return pieces[k] if pieces else k % trigger_pieces(self.trigger)

    @property
    def server_eta(self) -> float:
        """The server learning rate of the aggregation (1 unless the aggregator takes server-lr)."""
        uses_lr = registry("server_strategies.aggregators", "AGGREGATORS").meta(self.aggregation).get("server_lr")
        return self.server_lr if uses_lr else 1.0

    @classmethod
    def added_defaults(cls) -> dict[str, Any]:
        """Keys added after sweeps were recorded, with their defaults: a sweep run's identity includes
        them only when set away from the default, so earlier runs keep their directory names."""
        return {f.name.replace("_", "-"): f.default for f in dataclasses.fields(cls) if f.metadata["added"]}

    @classmethod
    def keys_with_role(cls, role: str) -> tuple[str, ...]:
        """The kebab-case keys that declare a role (see ROLES)."""
        if role not in ROLES:
            raise ValueError(f"unknown role '{role}'")
        return tuple(f.name.replace("_", "-") for f in dataclasses.fields(cls) if role in f.metadata["roles"])

    # --- validation -------------------------------------------------------------------
    def validate(self) -> None:
        """Check every value; raise ConfigError naming the first bad key.

        The plugins are imported first, so that the components they register are valid choices.
        """
        load_plugins(self.plugins)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if callable(choices):
                choices = choices()
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(unknown_choice(f.name.replace("_", "-"), value, tuple(choices)))
        from .models import model_input

        if self.model:
            _check(self.model in MODEL_CHOICES(), "model", unknown_choice("model", self.model, MODEL_CHOICES()))
        channels, size = model_input(self.model_name)
        data_channels, data_size = (3, 32) if self.dataset == "cifar10" else (1, 28)
        if (channels, size) != (data_channels, data_size):
            raise ConfigError(
                f"model: '{self.model_name}' takes {channels}x{size}x{size} inputs, "
                f"{self.dataset} images are {data_channels}x{data_size}x{data_size}"
            )
        _check(self.num_clients >= 1, "num-clients", f"must be >= 1, got {self.num_clients}")
        _check(self.num_rounds >= 0, "num-rounds", f"must be >= 0, got {self.num_rounds}")
        _check(0.0 < self.fraction <= 1.0, "fraction", f"must be in (0, 1], got {self.fraction}")
        _check(0.0 < self.data_fraction <= 1.0, "data-fraction", f"must be in (0, 1], got {self.data_fraction}")
        _check(self.test_subset >= 0, "test-subset", f"must be >= 0, got {self.test_subset}")
        _check(
            1 <= self.labels_per_client <= NUM_CLASSES,
            "labels-per-client",
            f"must be in 1..{NUM_CLASSES}, got {self.labels_per_client}",
        )
        _check(self.dirichlet_alpha > 0, "dirichlet-alpha", f"must be > 0, got {self.dirichlet_alpha}")
        for key in ("lr", "poison_lr", "server_lr"):
            _check(getattr(self, key) > 0, key.replace("_", "-"), f"must be > 0, got {getattr(self, key)}")
        for key in ("batch_size", "local_epochs", "poison_epochs", "eval_every", "eval_batch_size"):
            _check(getattr(self, key) >= 1, key.replace("_", "-"), f"must be >= 1, got {getattr(self, key)}")
        _check(0.0 < self.lr_decay <= 1.0, "lr-decay", f"must be in (0, 1], got {self.lr_decay}")
        _check(self.min_replies >= 1, "min-replies", f"must be >= 1, got {self.min_replies}")
        _check(self.robust_f >= 0, "robust-f", f"must be >= 0, got {self.robust_f}")
        _check(self.multikrum_select >= 0, "multikrum-select", f"must be >= 0, got {self.multikrum_select}")
        _check(0.0 <= self.trim_fraction < 0.5, "trim-fraction", f"must be in [0, 0.5), got {self.trim_fraction}")
        _check(self.clip_norm >= 0, "clip-norm", f"must be >= 0, got {self.clip_norm}")
        _check(self.flame_lambda >= 0, "flame-lambda", f"must be >= 0, got {self.flame_lambda}")
        _check(self.foolsgold_confidence > 0, "foolsgold-confidence",
               f"must be > 0, got {self.foolsgold_confidence}")
        _check(self.dp_clip_norm > 0, "dp-clip-norm", f"must be > 0, got {self.dp_clip_norm}")
        _check(self.dp_noise_multiplier > 0, "dp-noise-multiplier", f"must be > 0, got {self.dp_noise_multiplier}")
        _check(0.0 < self.dp_delta < 1.0, "dp-delta", f"must be in (0, 1), got {self.dp_delta}")
        self.widths  # noqa: B018 - parses model-widths
        attackers = self.attackers
        if not self.attacker_ids.strip():
            _check(
                0 <= self.num_attackers <= self.num_clients,
                "num-attackers",
                f"{self.num_attackers} attackers but only {self.num_clients} clients",
            )
        _check(len(set(attackers)) == len(attackers), "attacker-ids", f"repeated ids in '{self.attacker_ids}'")
        bad = [a for a in attackers if not 0 <= a < self.num_clients]
        _check(not bad, "attacker-ids", f"ids {bad} out of range 0..{self.num_clients - 1}")
        specs = self.attack_rounds.split("/")
        for spec in specs:
            parse_round_spec(spec, "attack-rounds")
        _check(
            len(specs) in (1, len(attackers)),
            "attack-rounds",
            f"{len(specs)} '/'-separated specs for {len(attackers)} attackers",
        )
        for key in ("victim_label", "attack_label"):
            value = getattr(self, key)
            _check(0 <= value < NUM_CLASSES, key.replace("_", "-"), f"label {value} out of range 0..{NUM_CLASSES - 1}")
        if self.attack_mode == "victim" and attackers:
            _check(self.victim_label != self.attack_label, "attack-label", "must differ from victim-label")
        replace_at = self.clients_per_round / self.server_eta
        _check(
            1.0 <= self.gamma <= max(replace_at, 1.0) + 1e-9,
            "gamma",
            f"must be in [1, n/eta={replace_at:g}] (n={self.clients_per_round} clients per round; "
            f"gamma = n/eta replaces the global model), got {self.gamma}",
        )
        _check(
            0 <= self.poison_per_batch <= self.batch_size,
            "poison-per-batch",
            f"must be in 0..batch-size ({self.batch_size}), got {self.poison_per_batch}",
        )
        from .triggers import trigger_for, trigger_pieces

        pieces, count = parse_int_list(self.dba_pieces, "dba-pieces"), trigger_pieces(self.trigger)
        if pieces:
            _check(count > 0, "dba-pieces", f"trigger '{self.trigger}' is not distributed in pieces")
            _check(len(pieces) == len(attackers), "dba-pieces", f"{len(pieces)} pieces for {len(attackers)} attackers")
            _check(all(0 <= p < count for p in pieces), "dba-pieces", f"pieces must be 0..{count - 1}, got {pieces}")
        _check(0.0 < self.blend_alpha <= 1.0, "blend-alpha", f"must be in (0, 1], got {self.blend_alpha}")
        origin = parse_int_list(self.trigger_origin, "trigger-origin")
        _check(len(origin) in (0, 2), "trigger-origin", f"expected 'row,col', got '{self.trigger_origin}'")
        try:
            trigger = trigger_for(self.trigger, data_size, origin, config=self.to_flat())
        except ValueError as exc:
            raise ConfigError(f"trigger: {exc}") from None
        if trigger.semantic:
            _check(self.attack_mode == "victim", "attack-mode",
                   f"trigger '{self.trigger}' relabels the victim images that have its feature: it needs victim mode")
            _check(self.dataset == "cifar10" or not registry("fl_backdoor.triggers", "TRIGGERS")
                   .meta(self.trigger).get("colour"), "trigger", f"'{self.trigger}' needs colour images (cifar10)")
        outside = trigger.outside(data_size)
        _check(
            not outside,
            "trigger-origin",
            f"trigger '{self.trigger}' puts pixels {outside[:3]} outside the {data_size}x{data_size} image",
        )
        _check(0.0 < self.mvp_rate < 1.0, "mvp-rate", f"must be in (0, 1), got {self.mvp_rate}")
        _check(
            0.0 < self.validation_fraction < 0.5,
            "validation-fraction",
            f"must be in (0, 0.5), got {self.validation_fraction}",
        )
        for key in ("pruning_max_drop", "aw_max_drop"):
            value = getattr(self, key)
            _check(0.0 <= value <= 1.0, key.replace("_", "-"), f"must be in [0, 1], got {value}")
        _check(self.curve_points >= 0, "curve-points", f"must be >= 0, got {self.curve_points}")
        _check(self.finetune_rounds >= 0, "finetune-rounds", f"must be >= 0, got {self.finetune_rounds}")
        _check(math.isfinite(self.sam_rho) and self.sam_rho > 0, "sam-rho", f"must be > 0, got {self.sam_rho}")
        _check(math.isfinite(self.clp_u), "clp-u", f"must be a finite number, got {self.clp_u}")
        _check(self.ibau_rounds >= 1, "ibau-rounds", f"must be >= 1, got {self.ibau_rounds}")
        _check(math.isfinite(self.ibau_norm) and self.ibau_norm > 0, "ibau-norm", f"must be > 0, got {self.ibau_norm}")
        _check(math.isfinite(self.ibau_lr) and self.ibau_lr > 0, "ibau-lr", f"must be > 0, got {self.ibau_lr}")
        _check(0.0 <= self.rnp_threshold <= 1.0, "rnp-threshold", f"must be in [0, 1], got {self.rnp_threshold}")
        _check(self.finetune_patience >= 1, "finetune-patience", f"must be >= 1, got {self.finetune_patience}")
        _check(self.aw_delta >= 0, "aw-delta", f"must be >= 0, got {self.aw_delta}")
        _check(self.aw_delta_step > 0, "aw-delta-step", f"must be > 0, got {self.aw_delta_step}")
        _check(
            0 < self.aw_delta_min <= self.aw_delta_start,
            "aw-delta-min",
            f"must be in (0, aw-delta-start={self.aw_delta_start}], got {self.aw_delta_min}",
        )
        _check(self.client_cpus > 0, "client-cpus", f"must be > 0, got {self.client_cpus}")
        importlib.import_module("server_strategies.phases").defense_steps(self.defense)
        _check(self.device in ("auto", "cpu", "cuda"), "device", f"'{self.device}' is not one of auto, cpu, cuda")
        _check(not (self.resume and self.init_checkpoint), "resume", "cannot be combined with init-checkpoint")
        kinds = self.malformed_reply.split("/")
        malformed = MALFORMED_CHOICES()
        for kind in kinds:
            _check(kind in malformed, "malformed-reply", unknown_choice("kind", kind, malformed))
        _check(
            len(kinds) in (1, len(attackers)),
            "malformed-reply",
            f"{len(kinds)} '/'-separated kinds for {len(attackers)} attackers",
        )
        _check(self.adaptive_delta > 0, "adaptive-delta", f"must be > 0, got {self.adaptive_delta}")
        _check(self.pgd_norm >= 0, "pgd-norm", f"must be >= 0, got {self.pgd_norm}")
        _check(0.0 < self.neurotoxin_ratio <= 1.0, "neurotoxin-ratio",
               f"must be in (0, 1], got {self.neurotoxin_ratio}")
        _check(self.alie_z >= 0, "alie-z", f"must be >= 0, got {self.alie_z}")
        _check(self.ipm_epsilon > 0, "ipm-epsilon", f"must be > 0, got {self.ipm_epsilon}")
        _check(self.minmax_gamma > 0, "minmax-gamma", f"must be > 0, got {self.minmax_gamma}")
        _check(self.pgd_every >= 1, "pgd-every", f"must be >= 1, got {self.pgd_every}")
        _check(
            self.adaptive_attack != "pruning-aware-oracle" or bool(self.oracle_checkpoint),
            "oracle-checkpoint",
            "pruning-aware-oracle needs the checkpoint holding the final mask",
        )
        _check(not (self.resume and not self.run_name), "resume", "needs run-name (the run directory to continue)")
        _check(self.run_name in ("", Path(self.run_name).name) and self.run_name not in (".", ".."), "run-name",
               f"'{self.run_name}' is not a single directory name inside output-dir")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Convert a raw value (often a string from a command line) to the field's type."""
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


def config_from_args(overrides: list[str], base: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Build a config from 'key=value' strings on top of a base mapping."""
    values = dict(base or {})
    for item in overrides:
        for pair in item.split():
            if "=" not in pair:
                raise ConfigError(f"'{pair}' is not key=value")
            key, value = pair.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return ExperimentConfig.from_flat(values)


def toml_value(value: Any) -> str:
    """A config value written as TOML (as pyproject's table and `flwr run --run-config` take it)."""
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def toml_table() -> str:
    """The schema's defaults as the body of pyproject's [tool.flwr.app.config] table."""
    fields = dataclasses.fields(ExperimentConfig)
    return "\n".join(f"{f.name.replace('_', '-')} = {toml_value(f.default)}" for f in fields)


def markdown_reference() -> str:
    """The schema as a markdown table (key, default, meaning) for the README."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(ExperimentConfig):
        meaning = f.metadata["help"].replace("|", "/")
        rows.append(f"| `{f.name.replace('_', '-')}` | `{toml_value(f.default)}` | {meaning} |")
    return "\n".join(rows) + "\n"


def sync_pyproject(path: str = "pyproject.toml") -> None:
    """Rewrite the body of [tool.flwr.app.config] in pyproject.toml from the schema."""
    text = Path(path).read_text()
    head, marker, rest = text.partition("[tool.flwr.app.config]\n")
    if not marker:
        raise SystemExit(f"{path} has no [tool.flwr.app.config] table")
    tail = rest[rest.index("\n[") + 1 :] if "\n[" in rest else ""
    Path(path).write_text(head + marker + toml_table() + "\n" + ("\n" + tail if tail else ""))


def sync_readme(path: str = "README.md") -> None:
    """Replace the configuration table of the README with markdown_reference()."""
    text = Path(path).read_text()
    start = text.index("| key | default | meaning |")
    end = text.index("\n\n", start) + 1
    Path(path).write_text(text[:start] + markdown_reference() + text[end:])


def registered_choices() -> dict[str, tuple[str, ...]]:
    """Every key whose values come from a registry, with the names registered now."""
    phases = importlib.import_module("server_strategies.phases")
    return {"model": MODEL_CHOICES(), "trigger": TRIGGER_CHOICES(), "aggregation": AGGREGATION_CHOICES(),
            "adaptive-attack": ADAPTIVE_CHOICES(), "malformed-reply": MALFORMED_CHOICES(),
            "byzantine-attack": BYZANTINE_CHOICES(),
            "defense": tuple(dict.fromkeys((*phases.MODES, *phases.PHASES.names())))}


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--choices"]:
        for key, names in registered_choices().items():
            print(f"{key}: {', '.join(names)}")
    elif sys.argv[1:] == ["--sync-docs"]:
        sync_pyproject()
        sync_readme()
    elif sys.argv[1:] == ["--markdown"]:
        print(markdown_reference(), end="")
    else:
        print(toml_table())
