"""Shared command-line plumbing of the experiment scripts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .allocator import keep_freed_memory
from .config import ExperimentConfig, UserError, config_from_args


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """-c/--config key=value (repeatable), the same keys as `flwr run --run-config`."""
    parser.add_argument("-c", "--config", action="append", default=[], metavar="KEY=VALUE",
                        help="override any run-config key (docs/configuration.md), one key=value each; "
                             "the value may hold spaces; repeatable")


def config_from_cli(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The script's base settings, then the user's -c overrides, validated."""
    return config_from_args(args.config, base)


def run_cli(main: Callable[[], Any]) -> None:
    """Run a script's main; bad input ends it with one 'error:' line and exit code 2."""
    keep_freed_memory()  # the scripts train in this process too (bare loops, centralized defenses)
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
