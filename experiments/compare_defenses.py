#!/usr/bin/env python3
"""Centralized defenses against the federated cleansing, on one backdoored model and one clean set.

    python experiments/compare_defenses.py --checkpoint runs/<run>/checkpoints/trained.pt
    python experiments/compare_defenses.py -c data-dir=data -c num-rounds=30 ...   # trains the model first

Every post-training defense (ANP, Fine-Pruning, Neural Cleanse, fine-tuning) repairs a
copy of the same backdoored global model using only the server's clean set
(``validation_set``: validation-fraction of the training data, 1% by default).  HaS-Net
replaces training: it trains its own model centrally on the union of all clients' data,
poison included, healing on that same clean set; its row holds that model's TA/AA,
next to an undefended centralized model trained on the same data.  AA is measured and
reported only; nothing is chosen by it.

The output directory holds table.md, table.csv, results.json (the rows and every
defense's details), config.json (the run config and the defense settings),
versions.json and, with --anp-curve, anp_curve.csv.  In a sweep (Table IV of
experiments/paper.py) each comparison is a run of its own, run by ``ComparisonRun``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defenses.anp import (
    PRUNING_RULES,
    ANPSettings,
    NeuronUnit,
    PruningRule,
    anp_masks,
    anp_prune,
    apply_pruning,
    prune_by_threshold,
)
from defenses.budget import Budget
from defenses.fine_pruning import MAX_DROP, fine_pruning
from defenses.fine_tuning import FINE_TUNING
from defenses.hasnet import HaSNetIteration, HaSNetSettings, collected_data, hasnet_train
from defenses.neural_cleanse import NCSettings, neural_cleanse
from fl_backdoor.cli import add_config_arguments, run_cli
from fl_backdoor.config import NUM_CLASSES, ExperimentConfig, UserError, config_from_args
from fl_backdoor.evaluation import Evaluator
from fl_backdoor.federation_data import test_set, validation_set
from fl_backdoor.low_confidence import epsilon_labels
from fl_backdoor.masks import NeuronMask, install_mask
from fl_backdoor.models import build_model
from fl_backdoor.run_dir import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    package_versions,
    write_csv,
    write_json,
)
from fl_backdoor.sweeps import SWEEP_KEYS, Experiment
from fl_backdoor.tables import PHASE_TITLES
from fl_backdoor.training import SGDSettings, accuracy, pick_device, train
from server_strategies.phases import CLEAN_BUDGET

DEFENSES = ("anp", "hasnet", "fine-pruning", "neural-cleanse", "fine-tuning")
FEDERATED_PHASES = ("fp", "fp-aw", "all", "aw")  # federated results shown as rows, when the run has them
CURVE_THRESHOLDS = [round(0.05 * i, 2) for i in range(20)]
_ANP, _NC, _HASNET = ANPSettings(), NCSettings(), HaSNetSettings()


def _check(condition: bool, flag: str, message: str) -> None:
    if not condition:
        raise UserError(f"{flag}: {message}")


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """Which defenses run and with which settings; the defaults are the papers' (REFERENCE.md).

    Each field is the command-line option of the same name (``anp_eps`` is ``--anp-eps``);
    an invalid value raises a UserError naming the option.
    """

    defenses: tuple[str, ...] = DEFENSES
    anp_eps: float = _ANP.eps
    anp_steps: int = _ANP.steps
    anp_alpha: float = _ANP.alpha
    anp_lr: float = _ANP.lr
    anp_momentum: float = _ANP.momentum
    anp_batch_size: int = _ANP.batch_size
    anp_iterations: int = _ANP.iterations
    anp_rules: tuple[str, ...] = ("threshold", "max-drop")
    anp_threshold: float = PruningRule().value
    anp_fraction: float = 0.05
    anp_max_drop: float = MAX_DROP
    anp_curve: bool = False
    ft_lr: float = FINE_TUNING.lr
    ft_epochs: int = FINE_TUNING.epochs
    ft_batch_size: int = FINE_TUNING.batch_size
    fp_layer: str = ""
    fp_max_drop: float = MAX_DROP
    nc_steps: int = _NC.steps
    nc_lr: float = _NC.lr
    nc_l1: float = _NC.l1
    nc_batch_size: int = _NC.batch_size
    nc_threshold: float = _NC.anomaly_threshold
    nc_unlearn_fraction: float = _NC.unlearn_fraction
    hasnet_iterations: int = _HASNET.iterations
    hasnet_healing_epochs: int = _HASNET.healing_epochs
    hasnet_tau: float = _HASNET.tau
    label_confidence: float = 1.0
    hasnet_baseline: bool = True

    def __post_init__(self) -> None:
        unknown = [d for d in self.defenses if d not in DEFENSES]
        _check(bool(self.defenses) and not unknown, "--defenses",
               f"unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(DEFENSES)}")
        for name in ("anp_steps", "anp_batch_size", "anp_iterations", "ft_epochs", "ft_batch_size", "nc_steps",
                     "nc_batch_size", "hasnet_iterations", "hasnet_healing_epochs"):
            _check(getattr(self, name) >= 1, _flag(name), f"must be >= 1, got {getattr(self, name)}")
        for name in ("anp_eps", "anp_lr", "ft_lr", "nc_lr"):
            _check(getattr(self, name) > 0, _flag(name), f"must be > 0, got {getattr(self, name)}")
        _check(bool(self.anp_rules) and all(r in PRUNING_RULES for r in self.anp_rules), "--anp-rules",
               f"'{','.join(self.anp_rules)}' is not a comma-separated subset of {', '.join(PRUNING_RULES)}")
        for name in ("anp_alpha", "anp_momentum", "anp_fraction", "anp_max_drop", "nc_unlearn_fraction",
                     "fp_max_drop"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, _flag(name), f"must be in [0, 1], got {value}")
        _check(self.nc_l1 >= 0, "--nc-l1", f"must be >= 0, got {self.nc_l1}")
        _check(self.hasnet_tau >= 0, "--hasnet-tau", f"must be >= 0, got {self.hasnet_tau}")
        epsilon_labels(torch.zeros(1, dtype=torch.long), self.label_confidence, NUM_CLASSES)  # validates it

    @property
    def chosen(self) -> list[str]:
        """The chosen defenses in table order."""
        return [d for d in DEFENSES if d in self.defenses]

    @property
    def digest(self) -> str:
        """A short hash of every option: names the comparison's sweep run."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:8]

    def anp(self) -> ANPSettings:
        """ANP's mask optimisation settings."""
        return ANPSettings(eps=self.anp_eps, steps=self.anp_steps, alpha=self.anp_alpha, lr=self.anp_lr,
                           momentum=self.anp_momentum, batch_size=self.anp_batch_size,
                           iterations=self.anp_iterations)

    def anp_pruning_rules(self) -> list[PruningRule]:
        """The requested ANP pruning rules, in a fixed order."""
        values = {"threshold": self.anp_threshold, "fraction": self.anp_fraction, "max-drop": self.anp_max_drop}
        return [PruningRule(kind, values[kind]) for kind in PRUNING_RULES if kind in self.anp_rules]

    def neural_cleanse(self) -> NCSettings:
        """Neural Cleanse's settings."""
        return NCSettings(steps=self.nc_steps, lr=self.nc_lr, l1=self.nc_l1, batch_size=self.nc_batch_size,
                          anomaly_threshold=self.nc_threshold, unlearn_fraction=self.nc_unlearn_fraction)

    def fine_tuning(self) -> SGDSettings:
        """Fine-tuning's settings (plain, after Fine-Pruning, and Neural Cleanse's unlearning)."""
        return SGDSettings(lr=self.ft_lr, epochs=self.ft_epochs, batch_size=self.ft_batch_size,
                           momentum=FINE_TUNING.momentum, weight_decay=FINE_TUNING.weight_decay)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _names(text: str) -> tuple[str, ...]:
    """'anp, hasnet' -> ('anp', 'hasnet')."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; their defaults are CompareOptions' (the papers', REFERENCE.md)."""
    d = CompareOptions()
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="", help="backdoored global model (run_dir/checkpoints/X.pt, with "
                   "run_dir/config.json); empty = train one with run_simulation and the -c settings")
    p.add_argument("--defenses", default=",".join(d.defenses), help="comma-separated subset of " + ",".join(DEFENSES))
    p.add_argument("--out", default="", help="output directory; empty = results/compare-<time>")
    add_config_arguments(p)
    g = p.add_argument_group("ANP (Wu and Wang 2021)")
    g.add_argument("--anp-eps", type=float, default=d.anp_eps, help="perturbation budget")
    g.add_argument("--anp-steps", type=int, default=d.anp_steps, help="perturbation steps per iteration")
    g.add_argument("--anp-alpha", type=float, default=d.anp_alpha, help="trade-off alpha of eq. 8")
    g.add_argument("--anp-lr", type=float, default=d.anp_lr, help="mask SGD learning rate")
    g.add_argument("--anp-momentum", type=float, default=d.anp_momentum, help="mask SGD momentum")
    g.add_argument("--anp-batch-size", type=int, default=d.anp_batch_size)
    g.add_argument("--anp-iterations", type=int, default=d.anp_iterations)
    g.add_argument("--anp-rules", default=",".join(d.anp_rules),
                   help="pruning rules, one table row each, all from the same masks: comma-separated subset of "
                   + ",".join(PRUNING_RULES))
    g.add_argument("--anp-threshold", type=float, default=d.anp_threshold,
                   help="rule 'threshold' (the paper's): prune neurons whose mask is <= this")
    g.add_argument("--anp-fraction", type=float, default=d.anp_fraction,
                   help="rule 'fraction': prune this share of all neurons, smallest masks first")
    g.add_argument("--anp-max-drop", type=float, default=d.anp_max_drop,
                   help="rule 'max-drop': prune smallest-mask neurons while clean accuracy stays within this "
                   "of the unpruned model's (Fine-Pruning's stop rule; no attack data involved)")
    g.add_argument("--anp-curve", action="store_true",
                   help="also write anp_curve.csv: TA/AA at mask thresholds 0..0.95 (report only)")
    g = p.add_argument_group("fine-tuning (plain, after Fine-Pruning, and Neural Cleanse's unlearning)")
    g.add_argument("--ft-lr", type=float, default=d.ft_lr)
    g.add_argument("--ft-epochs", type=int, default=d.ft_epochs)
    g.add_argument("--ft-batch-size", type=int, default=d.ft_batch_size)
    g = p.add_argument_group("Fine-Pruning (Liu et al. 2018)")
    g.add_argument("--fp-layer", default=d.fp_layer, help="layer to prune; empty = the model's last conv layer")
    g.add_argument("--fp-max-drop", type=float, default=d.fp_max_drop,
                   help="stop pruning before clean accuracy drops more than this")
    g = p.add_argument_group("Neural Cleanse (Wang et al. 2019)")
    g.add_argument("--nc-steps", type=int, default=d.nc_steps)
    g.add_argument("--nc-lr", type=float, default=d.nc_lr)
    g.add_argument("--nc-l1", type=float, default=d.nc_l1, help="weight of the mask's L1 norm")
    g.add_argument("--nc-batch-size", type=int, default=d.nc_batch_size)
    g.add_argument("--nc-threshold", type=float, default=d.nc_threshold, help="anomaly index threshold")
    g.add_argument("--nc-unlearn-fraction", type=float, default=d.nc_unlearn_fraction,
                   help="share of each unlearning batch stamped with the reversed trigger")
    g = p.add_argument_group("HaS-Net (Ali et al.); trains with the config's lr, momentum, weight-decay, batch-size")
    g.add_argument("--hasnet-iterations", type=int, default=d.hasnet_iterations, help="i_max")
    g.add_argument("--hasnet-healing-epochs", type=int, default=d.hasnet_healing_epochs, help="N")
    g.add_argument("--hasnet-tau", type=float, default=d.hasnet_tau)
    g.add_argument("--label-confidence", type=float, default=d.label_confidence,
                   help="epsilon of the low-confidence attack (eq. 1) on the collected poisoned samples; "
                   "1 = hard labels")
    g.add_argument("--hasnet-baseline", action=argparse.BooleanOptionalAction, default=d.hasnet_baseline,
                   help="also train an undefended centralized model on the same collected data")
    return p


def options_from_args(args: argparse.Namespace) -> CompareOptions:
    """The parsed command line as CompareOptions (validated)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(CompareOptions)}
    values.update(defenses=_names(args.defenses), anp_rules=_names(args.anp_rules))
    return CompareOptions(**values)


# --- the backdoored model ---------------------------------------------------------------------------
def load_backdoored(path: Path, overrides: Sequence[str] = (),
                    changes: Mapping[str, Any] | None = None) -> tuple[ExperimentConfig, dict[str, Any], Path]:
    """Config, checkpoint data and run directory of a checkpoint.

    The config is the run's config.json with ``changes``, then the -c ``overrides``, on top.
    """
    data = load_checkpoint(path)
    run_dir = path.resolve().parent.parent
    config_file = run_dir / "config.json"
    if config_file.is_file():
        try:
            base = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{config_file} is not valid JSON ({exc.msg})") from None
    elif isinstance(data.get("config"), dict):
        base = data["config"]
    else:
        raise CheckpointError(f"no config for {path}: expected {config_file} or a config in the checkpoint")
    return config_from_args(list(overrides), {**base, **(changes or {})}), data, run_dir


def model_factory(cfg: ExperimentConfig, data: dict[str, Any], device: torch.device) -> Callable[[], nn.Module]:
    """A function returning a fresh copy of the checkpoint's model (with its mask, if any) on the device."""
    mask = NeuronMask.from_dict(data["mask"]) if data.get("mask") else None

    def fresh() -> nn.Module:
        model = build_model(cfg)
        try:
            model.load_state_dict(data["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not fit model {cfg.model_name}: "
                                  f"{str(exc).splitlines()[0]}") from None
        return install_mask(model, mask).to(device)

    fresh()  # fail now, not after the first defense
    return fresh


def federated_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of the federated cleansing phases recorded in the run's results.json (none when absent)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return []
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    phases, seconds = results.get("phases", {}), results.get("phase_seconds", {})
    pruned = phases.get("fp", {}).get("pruned", "")
    rows = []
    for key in FEDERATED_PHASES:
        if "ta" in phases.get(key, {}):
            rows.append(row(f"Federated {PHASE_TITLES[key]}", phases[key], "" if key == "aw" else pruned,
                            sum(v for k, v in seconds.items() if k != "train") if key in ("all", "aw") else ""))
    return rows


def training_seconds(run_dir: Path) -> float | str:
    """Seconds of the federated training phase, when the run recorded them."""
    try:
        seconds: float = json.loads((run_dir / "results.json").read_text())["phase_seconds"]["train"]
    except (OSError, KeyError, json.JSONDecodeError):
        return ""
    return seconds


# --- table --------------------------------------------------------------------------------------------
def row(name: str, measured: Mapping[str, Any], pruned: int | str, seconds: float | str) -> dict[str, Any]:
    """One table row: TA and AA in percent."""
    return {"defense": name, "ta": round(100 * float(measured["ta"]), 2), "aa": round(100 * float(measured["aa"]), 2),
            "pruned": pruned, "seconds": round(seconds, 1) if isinstance(seconds, float) else seconds}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table."""
    lines = ["| Defense | TA | AA | Neurons pruned | Seconds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['defense']} | {r['ta']:.1f} | {r['aa']:.1f} | {r['pruned']} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def output_directory(requested: str) -> Path:
    """The requested directory, or a fresh results/compare-<time>[-n] (not created here)."""
    if requested:
        return Path(requested).expanduser().resolve()
    base = Path("results").resolve() / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    path, suffix = base, 1
    while path.exists():
        suffix += 1
        path = base.with_name(f"{base.name}-{suffix}")
    return path


def _say(message: str) -> None:
    print(message, flush=True)


# --- the defenses ---------------------------------------------------------------------------------------
class Comparison:
    """Runs the chosen defenses on copies of one backdoored model with one clean set."""

    def __init__(self, options: CompareOptions, cfg: ExperimentConfig, fresh: Callable[[], nn.Module],
                 device: torch.device, out: Path) -> None:
        self.options, self.cfg, self.fresh, self.device, self.out = options, cfg, fresh, device, out
        clean = validation_set(cfg)
        if len(clean) == 0:
            raise UserError("validation-fraction: the server's clean set is empty")
        self.x, self.y = clean.x.to(device), clean.y.to(device)
        self.evaluate = Evaluator(cfg, test_set(cfg), device)
        self.finetune = options.fine_tuning()
        self.details: dict[str, Any] = {"clean_samples": len(clean),
                                        "clean_accuracy": accuracy(fresh(), self.x, self.y), "guard": {}}
        self.budget = Budget(self.details["clean_accuracy"], CLEAN_BUDGET.of(cfg))

    def guarded(self, name: str, model: nn.Module, pruned: int | str, seconds: float) -> dict[str, Any]:
        """The defense's row, or the unchanged model's when the defended model's clean accuracy is below the
        budget (clean-budget under the input model's): no defense hands back a destroyed model.  What the method
        itself reached is kept in details["guard"]."""
        clean = accuracy(model, self.x, self.y)
        if self.budget.allows(clean):
            return row(name, self.evaluate(model), pruned, seconds)
        self.details["guard"][name] = self.budget.record(clean, method=self.evaluate(model))
        _say(f"  {name}: clean accuracy {clean:.4f} is below the budget's floor {self.budget.floor:.4f}: "
             f"the model is handed back unchanged")
        return row(f"{name} (unchanged: guard)", self.unchanged, 0 if pruned != "" else "", seconds)

    @functools.cached_property
    def unchanged(self) -> dict[str, float]:
        """The input model's evaluation: every guarded row's, computed once."""
        return self.evaluate(self.fresh())

    def generator(self) -> torch.Generator:
        """A fresh generator seeded from the config, so every defense sees the same randomness."""
        return torch.Generator().manual_seed(self.cfg.seed)

    def anp(self) -> list[dict[str, Any]]:
        """ANP: optimise the masks once, then one row per pruning rule."""
        started = time.perf_counter()
        settings = self.options.anp()
        units, masks = anp_masks(self.fresh(), self.x, self.y, settings, self.generator(),
                                 progress=lambda i, loss: _say(f"  ANP iteration {i}: objective {loss:.4f}"))
        optimised = time.perf_counter() - started
        rows, outcomes = [], {}
        for rule in self.options.anp_pruning_rules():
            begun, model = time.perf_counter(), self.fresh()
            result = anp_prune(model, units, masks, rule, self.x, self.y)
            seconds = optimised + time.perf_counter() - begun
            outcomes[rule.describe()] = {"pruned_per_layer": result.per_layer(),
                                         "clean_accuracy": accuracy(model, self.x, self.y)}
            rows.append(self.guarded(f"ANP ({rule.describe()})", model, result.count, seconds))
        self.details["anp"] = {"settings": dataclasses.asdict(settings), "rules": outcomes,
                               "neurons": {k: int(m.numel()) for k, m in masks.items()},
                               "mask_optimisation_seconds": round(optimised, 1)}
        if self.options.anp_curve:
            self.anp_curve(units, masks)
        return rows

    def anp_curve(self, units: list[NeuronUnit], masks: dict[str, torch.Tensor]) -> None:
        """TA/AA and clean accuracy against the mask threshold (a report; the threshold is fixed beforehand)."""
        rows = []
        for threshold in CURVE_THRESHOLDS:
            model = self.fresh()
            pruned = prune_by_threshold(masks, threshold)
            count = apply_pruning(model, units, pruned)
            rows.append({"threshold": threshold, "pruned": count, "clean": accuracy(model, self.x, self.y),
                         **self.evaluate(model)})
        write_csv(self.out / "anp_curve.csv", rows)

    def fine_pruning(self) -> list[dict[str, Any]]:
        """Fine-Pruning of the last conv layer (or --fp-layer), then fine-tuning."""
        model, started = self.fresh(), time.perf_counter()
        result = fine_pruning(model, self.x, self.y, self.finetune, self.generator(), layer=self.options.fp_layer,
                              max_drop=self.options.fp_max_drop)
        seconds = time.perf_counter() - started
        self.details["fine-pruning"] = {"layer": result.mask.layer, "pruned": list(result.mask.pruned),
                                        **{k: getattr(result, k) for k in ("clean_before", "clean_pruned",
                                                                           "clean_after")}}
        _say(f"  pruned {result.pruned} channels of {result.mask.layer}; clean accuracy "
             f"{result.clean_before:.3f} -> {result.clean_pruned:.3f}, after fine-tuning {result.clean_after:.3f}")
        return [self.guarded("Fine-Pruning", model, result.pruned, seconds)]

    def neural_cleanse(self) -> list[dict[str, Any]]:
        """Neural Cleanse: reverse triggers, flag targets, unlearn."""
        model, started = self.fresh(), time.perf_counter()
        settings = self.options.neural_cleanse()
        result = neural_cleanse(model, self.x, self.y, NUM_CLASSES, settings, self.finetune,
                                self.generator(), progress=lambda i, loss: _say(f"  NC step {i}: loss {loss:.4f}"))
        seconds = time.perf_counter() - started
        self.details["neural-cleanse"] = {
            "settings": dataclasses.asdict(settings), "flagged": result.flagged,
            "mask_norms": [round(float(v), 3) for v in result.triggers.norms],
            "anomaly_index": [round(float(v), 3) for v in result.anomaly],
            "trigger_success": [round(float(v), 4) for v in result.triggers.success]}
        _say(f"  mask L1 norms {[round(float(v), 1) for v in result.triggers.norms]}; flagged {result.flagged}")
        name = "Neural Cleanse" + ("" if result.flagged else " (nothing flagged)")
        return [self.guarded(name, model, "", seconds)]

    def fine_tuning(self) -> list[dict[str, Any]]:
        """Plain fine-tuning on the clean set."""
        model, started = self.fresh(), time.perf_counter()
        train(model, self.x, self.y, self.finetune, self.generator())
        return [self.guarded("Fine-tuning", model, "", time.perf_counter() - started)]

    def hasnet(self) -> list[dict[str, Any]]:
        """HaS-Net training on the collected data (and, optionally, undefended centralized training)."""
        cfg, o = self.cfg, self.options
        data = collected_data(cfg, self.device, o.label_confidence, self.generator())
        heal_targets = epsilon_labels(self.y, 1.0, NUM_CLASSES)
        settings = HaSNetSettings(iterations=o.hasnet_iterations, healing_epochs=o.hasnet_healing_epochs,
                                  tau=o.hasnet_tau, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                  batch_size=cfg.batch_size)
        poisoned = int(data.poisoned.sum())
        _say(f"  collected {data.targets.shape[0]} samples ({poisoned} poisoned, label confidence "
             f"{o.label_confidence}); healing set {self.y.shape[0]}")
        rows = []
        if o.hasnet_baseline:
            torch.manual_seed(cfg.seed)
            model, started = build_model(cfg).to(self.device), time.perf_counter()
            train(model, data.x, data.targets, settings.sgd(settings.iterations), self.generator())
            rows.append(row(f"Centralized training, no defense ({settings.iterations} epochs)", self.evaluate(model),
                            "", time.perf_counter() - started))

        def report(it: HaSNetIteration) -> None:
            _say(f"  HaS-Net iteration {it.iteration}: trained on {it.trained_on}, selected {it.selected} "
                 f"({it.kept_watched} of {poisoned} poisoned)")

        torch.manual_seed(cfg.seed)
        model, started = build_model(cfg).to(self.device), time.perf_counter()
        history = hasnet_train(model, data.x, data.targets, self.x, heal_targets, settings, self.generator(),
                               watch=data.poisoned, progress=report)
        rows.append(self.guarded("HaS-Net (centralized training)", model, "", time.perf_counter() - started))
        self.details["hasnet"] = {"settings": dataclasses.asdict(settings), "label_confidence": o.label_confidence,
                                  "collected": int(data.targets.shape[0]), "poisoned": poisoned,
                                  "iterations": [dataclasses.asdict(h) for h in history]}
        return rows


def compare(checkpoint: Path, out: Path, options: CompareOptions, overrides: Sequence[str] = (),
            changes: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run the chosen defenses on a checkpoint's model; write the outputs into ``out``; return the table rows.

    The model's config is its run's config.json with ``changes`` and the -c ``overrides`` on top.
    results.json is written last: a directory holding it is a finished comparison.
    """
    cfg, data, run_dir = load_backdoored(checkpoint, overrides, changes)
    device = pick_device(cfg.device)
    fresh = model_factory(cfg, data, device)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"run": cfg.to_flat(), "comparison": dataclasses.asdict(options),
                                     "checkpoint": str(checkpoint), "overrides": list(overrides),
                                     "run_dir": str(run_dir)})
    write_json(out / "versions.json", package_versions())
    _say(f"comparing {', '.join(options.chosen)} on {run_dir}; results in {out}")

    comparison = Comparison(options, cfg, fresh, device, out)
    rows = [row("Training (backdoored)", comparison.evaluate(fresh()), "", training_seconds(run_dir))]
    rows += federated_rows(run_dir)
    _say(f"clean set: {comparison.details['clean_samples']} samples; backdoored model TA {rows[0]['ta']:.2f} "
         f"AA {rows[0]['aa']:.2f}")
    for defense in options.chosen:
        _say(f"[{defense}] running")
        new = getattr(comparison, defense.replace("-", "_"))()
        for r in new:
            pruned = "-" if r["pruned"] == "" else r["pruned"]
            _say(f"[{defense}] {r['defense']}: TA {r['ta']:.2f}  AA {r['aa']:.2f}  pruned {pruned}  {r['seconds']} s")
        rows += new
    table = markdown(rows)
    atomic_write_text(out / "table.md", table)
    write_csv(out / "table.csv", rows)
    write_json(out / "results.json", {"rows": rows, "details": comparison.details})
    print(table, end="", flush=True)
    _say(f"results in {out}")
    return rows


# --- in a sweep ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ComparisonRun:
    """Sweep runner of a comparison (see ``comparison_of``): the defenses on the trained model of the
    run's parent (its ``init-checkpoint``), written into the run directory ``output-dir/run-name``."""

    options: CompareOptions

    def __call__(self, cfg: ExperimentConfig) -> Path:
        """Run the comparison; returns the run directory."""
        if not cfg.init_checkpoint:
            raise UserError(f"comparison {cfg.run_name}: no init-checkpoint (it compares on its parent's model)")
        out = Path(cfg.output_dir).expanduser().resolve() / cfg.run_name
        flat = cfg.to_flat()
        # the model's own config, placed (data, device) where the sweep runs this comparison
        placement = {k: flat[k] for k in ExperimentConfig.keys_with_role("placement") if k not in SWEEP_KEYS}
        # the clean set's size is the comparison's own (the reference target runs two on one model)
        compare(Path(cfg.init_checkpoint), out, self.options,
                changes={**placement, "validation-fraction": flat["validation-fraction"]})
        return out


def comparison_of(training: Experiment, options: CompareOptions) -> Experiment:
    """The sweep experiment comparing the centralized defenses on a training run's model (``ComparisonRun``).

    Its name follows the training (its parent) and, through the label, every comparison option.
    """
    return training.child(f"{training.label.removesuffix('-train')}-compare-{options.digest}")


def train_backdoored(overrides: Sequence[str]) -> Path:
    """Train a backdoored model with run_simulation (defense 'all' unless overridden); returns its checkpoint."""
    from server_strategies.simulation import run_simulation

    cfg = config_from_args(list(overrides), {"defense": "all"})
    _say(f"training a backdoored model: {cfg.num_rounds} rounds, {cfg.num_clients} clients, "
         f"attackers {list(cfg.attackers)}, defense '{cfg.defense}'")
    return run_simulation(cfg) / "checkpoints" / "trained.pt"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the comparison from the command line; returns the table rows."""
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    if args.checkpoint:
        return compare(Path(args.checkpoint), output_directory(args.out), options, args.config)
    return compare(train_backdoored(args.config), output_directory(args.out), options)


if __name__ == "__main__":
    run_cli(main)
