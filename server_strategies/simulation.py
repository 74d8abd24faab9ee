"""Run a whole experiment from Python in Flower's simulation engine (Ray).

On an existing Ray cluster set ``RAY_ADDRESS`` (e.g. ``auto`` or ``ray://host:10001``):
the simulation joins it instead of starting a local Ray instance.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from fl_backdoor.config import ExperimentConfig
from fl_backdoor.datasets import resolve_data_dir
from fl_backdoor.federation_data import check_attackers_data
from fl_backdoor.training import share_gpus_with_workers
from server_strategies.server_app import make_server_app


def backend_config(cfg: ExperimentConfig) -> dict:
    """Ray backend settings: client resources, and the cluster address when RAY_ADDRESS is set."""
    init_args: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = os.environ.get("RAY_ADDRESS", "")
    if address:
        init_args["address"] = address  # resources come from the cluster, not from this machine
    # Flower's actor pool never replaces a dead actor: Ray restarts it and retries the jobs
    # queued on it once, so a client that kills its worker loses only its own reply
    return {"client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": cfg.client_gpus,
                                 "max_restarts": -1, "max_task_retries": 1},
            "init_args": init_args}


def run_simulation(cfg: ExperimentConfig) -> Path:
    """Simulate ``cfg`` with one SuperNode per client; returns the run directory."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    from clients.client_app import app as client_app

    cfg.validate()
    if not cfg.resume:
        check_attackers_data(cfg.replace(data_dir=str(resolve_data_dir(cfg.data_dir))))  # before Ray starts
    outcome: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        share_gpus_with_workers()
        flwr_run_simulation(server_app=make_server_app(cfg, outcome), client_app=client_app,
                            num_supernodes=cfg.num_clients, backend_config=backend_config(cfg))
    if "run_dir" not in outcome:
        raise RuntimeError("the simulation ended without finishing the run (see the log above)")
    return outcome["run_dir"]
