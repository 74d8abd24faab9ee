"""The Flower ServerApp: federated training under attack, then the configured defense.

``flwr run .`` loads ``app`` and reads the run config from ``[tool.flwr.app.config]``
and ``--run-config``.  The Python API (``server_strategies.simulation``) builds its
own ServerApp around an ExperimentConfig with ``make_server_app``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_backdoor.config import ExperimentConfig, UserError
from server_strategies.pipeline import run_pipeline

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under ``flwr run``: bad input ends the run with one clear line."""
    try:
        run_pipeline(grid, ExperimentConfig.from_flat(dict(context.run_config)))
    except UserError as exc:
        print(f"error: {exc}", flush=True)


def make_server_app(cfg: ExperimentConfig, outcome: dict[str, Path]) -> ServerApp:
    """A ServerApp running ``cfg``; the run directory is stored in outcome['run_dir']."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome["run_dir"] = run_pipeline(grid, cfg)

    return server
