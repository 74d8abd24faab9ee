"""The ports' intermediate quantities, to set beside the reference codes' (issue 40, part 2).

    python experiments/diagnose_ports.py ibau --checkpoint RUN/checkpoints/trained.pt --lr 1e-4,1e-3
    python experiments/diagnose_ports.py anp --checkpoint RUN/checkpoints/trained.pt

``ibau``: after every I-BAU round (and before the first), the universal perturbation that
round 1 of the next would find: its L2 norm, how many clean images it moves off their label
(``flip``), how many it sends to the attack label (``to_target``, on clean images of
other labels: the perturbation acting as a trigger) and to which label it sends most
(``top_label``, ``top_share``), the clean accuracy, and TA/ASR on the
test set (reported only; nothing here decides on them).  One row per round and lr.

``anp``: ANP's mask values after the optimisation (quantiles, how many are at 0, below 0.2
and at 1, per layer) with batch norm in eval mode (this port) or train mode (the reference
codes), and what the threshold and clean-drop rules prune from them.

The clean set is the run's validation split (``-c validation-fraction=...`` changes it).
Rows print as they come and go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defenses.anp import ANPSettings, PruningRule, anp_masks, anp_prune
from defenses.fine_pruning import MAX_DROP
from defenses.ibau import IBAUSettings, ibau_unlearn, universal_perturbation
from experiments.compare_defenses import load_backdoored, model_factory
from fl_backdoor.cli import add_config_arguments, run_cli
from fl_backdoor.config import UserError
from fl_backdoor.evaluation import Evaluator
from fl_backdoor.federation_data import test_set, validation_set
from fl_backdoor.run_dir import write_json
from fl_backdoor.training import accuracy, pick_device


def prediction_shift(clean: torch.Tensor, moved: torch.Tensor, y: torch.Tensor, target: int) -> dict[str, float]:
    """What a perturbation did to the predictions: the share it changed (``flip``), the share of images of other
    labels than ``target`` it sends to ``target`` (``to_target``), and the label it sends most to, with its share."""
    others = y != target
    counts = torch.bincount(moved)
    return {"flip": float((moved != clean).double().mean()),
            "to_target": float((moved[others] == target).double().mean()) if bool(others.any()) else 0.0,
            "top_label": int(counts.argmax()), "top_share": float(counts.max()) / len(moved)}


def perturbation_effect(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: IBAUSettings, target: int,
                        seed: int) -> dict[str, float]:
    """The universal perturbation I-BAU's next round would start from, and what it does to the clean set."""
    delta = universal_perturbation(model, x, settings, torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        clean, moved = model(x).argmax(1), model(x + delta).argmax(1)
    return {"delta_l2": float(torch.linalg.vector_norm(delta)), **prediction_shift(clean, moved, y, target)}


def ibau_rows(fresh: Any, x: torch.Tensor, y: torch.Tensor, evaluate: Evaluator, lrs: list[float], rounds: int,
              norm: float, target: int, seed: int) -> list[dict[str, Any]]:
    """One row per lr and round (round 0: the input model)."""
    rows: list[dict[str, Any]] = []
    for lr in lrs:
        model, settings = fresh(), IBAUSettings(rounds=rounds, lr=lr, norm=norm)
        started = time.perf_counter()

        def record(m: nn.Module, lr: float = lr, started: float = started, settings: IBAUSettings = settings) -> bool:
            done = sum(1 for r in rows if r["lr"] == lr)
            row = {"lr": lr, "round": done, "clean": accuracy(m, x, y),
                   **perturbation_effect(m, x, y, settings, target, seed + done), **evaluate(m),
                   "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            return True

        record(model)
        ibau_unlearn(model, x, y, settings, torch.Generator().manual_seed(seed), keep=record)
    return rows


def mask_summary(values: torch.Tensor) -> dict[str, Any]:
    """Quantiles (0, 10, 50, 90, 100%) of mask values, and how many are 0, below 0.2 and 1."""
    q = torch.quantile(values.float(), torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]))
    return {"count": int(values.numel()), "quantiles_0_10_50_90_100": [round(float(v), 3) for v in q],
            "zero": int((values == 0).sum()), "below_0.2": int((values < 0.2).sum()), "one": int((values == 1).sum())}


def anp_rows(fresh: Any, x: torch.Tensor, y: torch.Tensor, evaluate: Evaluator, modes: list[str], seed: int
             ) -> list[dict[str, Any]]:
    """Per batch-norm mode: ANP's optimised masks (``mask_summary``, in all and per layer) and what the paper's
    threshold rule and the clean-drop rule prune, with clean accuracy, TA and ASR after each."""
    rows = []
    for mode in modes:
        started = time.perf_counter()
        units, masks = anp_masks(fresh(), x, y, ANPSettings(batch_norm=mode), torch.Generator().manual_seed(seed))
        row: dict[str, Any] = {"batch_norm": mode, "seconds": round(time.perf_counter() - started, 1),
                               "masks": {"all": mask_summary(torch.cat([m.flatten() for m in masks.values()])),
                                         **{layer: mask_summary(m.flatten()) for layer, m in masks.items()}}}
        for rule in (PruningRule(), PruningRule("max-drop", MAX_DROP)):
            model = fresh()
            result = anp_prune(model, units, masks, rule, x, y)
            row[rule.describe()] = {"pruned": result.count, "clean": accuracy(model, x, y), **evaluate(model)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, measure, print and write the rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", choices=("ibau", "anp"))
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoints/<name>.pt")
    parser.add_argument("--lr", default="1e-4", help="ibau: comma-separated Adam learning rates")
    parser.add_argument("--rounds", type=int, default=5, help="ibau: I-BAU rounds per lr")
    parser.add_argument("--norm", type=float, default=IBAUSettings.norm,
                        help="ibau: L2 bound of the perturbation (a large value: the reference's unbounded one)")
    parser.add_argument("--bn-mode", default="eval", help="anp: comma-separated batch-norm modes, eval and/or train")
    parser.add_argument("--out", default="", help="JSON file for the rows")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    path = Path(args.checkpoint)
    if not path.is_file():
        raise UserError(f"--checkpoint: no file {path}")
    try:
        lrs = [float(v) for v in args.lr.split(",")]
    except ValueError:
        raise UserError(f"--lr: '{args.lr}' is not a comma-separated list of numbers") from None
    if args.rounds < 1 or args.norm <= 0 or any(v <= 0 for v in lrs):
        raise UserError("--rounds must be >= 1, --norm and every --lr > 0")
    cfg, data, _ = load_backdoored(path, args.config)
    device = pick_device(cfg.device)
    fresh = model_factory(cfg, data, device)
    clean = validation_set(cfg)
    x, y = clean.x.to(device), clean.y.to(device)
    print(f"{args.port} on {path} with {len(clean)} clean images", flush=True)
    if args.port == "ibau":
        result: dict[str, Any] = {"rows": ibau_rows(fresh, x, y, Evaluator(cfg, test_set(cfg), device), lrs,
                                                    args.rounds, args.norm, cfg.attack_label, cfg.seed)}
    else:
        modes = args.bn_mode.split(",")
        if not set(modes) <= {"eval", "train"}:
            raise UserError(f"--bn-mode: '{args.bn_mode}' is not a comma-separated subset of eval, train")
        result = {"rows": anp_rows(fresh, x, y, Evaluator(cfg, test_set(cfg), device), modes, cfg.seed)}
    result = {"checkpoint": str(path), "clean_images": len(clean), "config": args.config, **result}
    if args.out:
        write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    run_cli(main)

