#!/usr/bin/env python3
"""Run one experiment (training under attack, then the configured defense) in Flower's simulation engine.

    python experiments/run.py -c dataset=mnist -c defense=all -c pruning-method=mvp
    python experiments/run.py --check -c aggregation=krum -c robust-f=3     # only check the settings

Takes the same keys as `flwr run . --run-config`, one -c key=value each; with RAY_ADDRESS set it runs on that
Ray cluster.  Settings that cannot work end with one 'error:' line (exit 2) before anything runs or is written;
combinations that act only sometimes print one 'warning:' line each.
"""

from __future__ import annotations

import argparse

from fl_backdoor.cli import add_config_arguments, config_from_cli, run_cli
from server_strategies.simulation import run_simulation


def main(argv: list[str] | None = None) -> None:
    """Parse -c overrides, then check them (--check) or run the simulation and print the run directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check the settings, print any warning, run nothing")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_cli(args)
    if args.check:
        for line in cfg.warnings():
            print(f"warning: {line}")
        print("settings are valid")
        return
    print(run_simulation(cfg))


if __name__ == "__main__":
    run_cli(main)
