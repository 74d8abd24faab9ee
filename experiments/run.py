#!/usr/bin/env python3
"""Run one experiment (training under attack, then the configured defense) in Flower's simulation engine.

    python experiments/run.py -c dataset=mnist -c defense=all -c pruning-method=mvp

Takes the same keys as `flwr run . --run-config`; with RAY_ADDRESS set it runs on that Ray cluster.
"""

from __future__ import annotations

import argparse

from fl_backdoor.cli import add_config_arguments, config_from_cli, run_cli
from server_strategies.simulation import run_simulation


def main() -> None:
    """Parse -c overrides, run the simulation, print the run directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    cfg = config_from_cli(parser.parse_args())
    print(run_simulation(cfg))


if __name__ == "__main__":
    run_cli(main)
