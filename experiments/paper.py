#!/usr/bin/env python3
"""Reproduce the tables and figures of the cleansing paper (Wu et al.), one command each.

    python experiments/paper.py table1 --scale tiny          # a smoke run: minutes
    python experiments/paper.py table2 --scale small         # a laptop: tens of minutes
    RAY_ADDRESS=auto python experiments/paper.py table1 --scale full     # a Ray cluster: the paper's setting

Targets: table1 .. table7, fig3, fig5 .. fig10, adaptive, ablation (see --help).  Every target
runs its experiments as a sweep of Ray tasks (fl_backdoor.sweeps) whose run directories land in
<results-dir>/runs/, shared by all targets of the same results directory: a run that
one target needs and another has finished is not run again, and an interrupted target
resumes where it stopped.  The target then writes <results-dir>/<target>/: table.csv
(raw rows), table.md (the paper's layout) and PNG plots.

The scales are experiments/scales.py, the targets' plans experiments/targets.py, their
tables and plots experiments/reports.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run by path: make the experiments package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.scales import SCALES, Pair, Setup
from experiments.targets import FACTORS, MATRIX_DEFENSES, TARGETS, Plan
from fl_backdoor.cli import add_config_arguments, run_cli
from fl_backdoor.config import UserError
from fl_backdoor.run_dir import write_json
from fl_backdoor.sweeps import SWEEP_KEYS, SweepOutcome, finished_runs, run_sweep


def parse_pairs(text: str) -> list[Pair]:
    """'9-0,9-1' -> [(9, 0), (9, 1)]: labels 0..9, victim and attack label different."""
    pairs = []
    for item in text.split(","):
        parts = item.strip().split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) <= 9 for p in parts) or parts[0] == parts[1]:
            raise argparse.ArgumentTypeError(f"'{item}' is not a pair VL-AL of two different labels 0..9")
        pairs.append((int(parts[0]), int(parts[1])))
    return pairs


def name_list(what: str, choices: Callable[[], Sequence[str]]) -> Callable[[str], list[str]]:
    """An argparse type: 'a,b' -> ['a', 'b'], each one of ``choices()`` (read when the option is parsed)."""
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        known = choices()
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; "
                                             f"choose from {', '.join(known)}")
        return names
    return parse


def aggregation_rules() -> tuple[str, ...]:
    """The registered aggregation rules."""
    from server_strategies.aggregators import AGGREGATORS

    return AGGREGATORS.names()


def run_plan(plan: Plan, results_dir: Path, *, report_only: bool = False, parallel: int | None = None,
             progress: bool = True) -> SweepOutcome:
    """Run a plan's experiments as a sweep, then the experiments that follow from their results.

    With ``report_only`` nothing runs: the outcome holds the runs finished so far, follow-ups included.
    """
    if report_only:
        outcome = finished_runs(plan.experiments, results_dir)
    else:
        outcome = run_sweep(plan.experiments, plan.runner, results_dir, parallel=parallel, progress=progress)
    later = plan.then.build(outcome) if plan.then is not None else []
    if plan.then is None or not later:
        return outcome
    if report_only:
        second = finished_runs(later, results_dir)
    else:
        print(f"{len(later)} experiments that need the first ones' results", flush=True)
        second = run_sweep(later, plan.then.runner, results_dir, parallel=parallel, progress=progress)
    outcome.skipped += [n for n in second.skipped if n not in outcome.finished]
    outcome.finished.update(second.finished)
    outcome.failed.update(second.failed)
    return outcome


def main(argv: list[str] | None = None) -> SweepOutcome:
    """Build the target's experiments, run them as a sweep, write its tables and plots."""
    targets = "\n".join(f"  {k:8s} {(f.__doc__ or '').splitlines()[0]}" for k, f in TARGETS.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="targets:\n" + targets)
    parser.add_argument("target", choices=list(TARGETS), metavar="TARGET",
                        help="table1..table7, fig3, fig5..fig10, adaptive, ablation, robust, attacks, matrix, "
                             "reference")
    parser.add_argument("--scale", choices=list(SCALES), default="small",
                        help="full: the paper's setting; small: a laptop; tiny: a smoke run (README)")
    parser.add_argument("--results-dir", default="", help="default: results/paper-<scale>")
    parser.add_argument("--parallel", type=int, default=None,
                        help="experiments at once (default: 1 locally; on a RAY_ADDRESS cluster as many as fit)")
    parser.add_argument("--pretrain-rounds", type=int, default=None,
                        help="clean rounds shared by all pairs before the attack (default: the scale's; 0 = none)")
    parser.add_argument("--pairs", type=parse_pairs, default=None,
                        help="victim->attack pairs instead of the scale's, e.g. 9-0,9-1,0-9 (Tables I, II, V, VI)")
    parser.add_argument("--factors", type=name_list("factor", lambda: list(FACTORS)), default=None,
                        help="ablation: the factors to run, in order, e.g. chosen,previous (default: all; see README)")
    parser.add_argument("--rules", type=name_list("aggregation rule", aggregation_rules), default=None,
                        help="robust, attacks: the aggregation rules, e.g. paper,krum,flame (default: all; see README)")
    parser.add_argument("--defenses", type=name_list("matrix defense", lambda: list(MATRIX_DEFENSES)), default=None,
                        help="matrix: its rows, e.g. clp,finetune-sam,rnp (default: all; see README)")
    parser.add_argument("--datasets", type=name_list("reference dataset", lambda: ["fashion-mnist", "cifar10"]),
                        default=None, help="reference: its datasets, e.g. fashion-mnist (default: both)")
    parser.add_argument("--variant", default="",
                        help="write the target's tables into <results-dir>/<target>-<variant> (e.g. a -c variant)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--report-only", action="store_true",
                        help="write the tables from the runs finished so far; run nothing")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    for item in args.config:
        key = item.split("=", 1)[0].strip()
        if key in SWEEP_KEYS:
            raise UserError(f"-c {key}: the sweep sets it for every run (choose the place with --results-dir)")
    if args.pretrain_rounds is not None and args.pretrain_rounds < 0:
        raise UserError(f"--pretrain-rounds: must be >= 0, got {args.pretrain_rounds}")
    setup = Setup(args.scale, args.config, args.pretrain_rounds, args.pairs, args.factors, args.rules,
                  args.defenses, args.datasets)
    plan = TARGETS[args.target](setup)
    results_dir = Path(args.results_dir or f"results/paper-{args.scale}").expanduser().resolve()
    print(f"{args.target} at scale {args.scale}: {len(plan.experiments)} experiments, results in {results_dir}",
          flush=True)
    outcome = run_plan(plan, results_dir, report_only=args.report_only, parallel=args.parallel,
                       progress=not args.no_progress)
    out = results_dir / (f"{args.target}-{args.variant}" if args.variant else args.target)
    write_json(out / "sweep.json", {"target": args.target, "scale": args.scale, "overrides": args.config,
                                    "command": sys.argv, "finished": {k: str(v) for k, v in outcome.finished.items()},
                                    "failed": outcome.failed})
    plan.report(outcome, out)
    print(f"{args.target}: {len(outcome.finished)} runs finished ({len(outcome.skipped)} before this command), "
          f"{len(outcome.failed)} failed; results in {out}", flush=True)
    if outcome.failed:
        for name, reason in outcome.failed.items():
            print(f"failed: {name}: {reason}", file=sys.stderr)
        raise SystemExit(1)
    return outcome


if __name__ == "__main__":
    run_cli(main)
