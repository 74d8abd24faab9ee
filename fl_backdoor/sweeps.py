"""Sweeps: many experiments as parallel Ray tasks, resumable, with shared upstream runs.

A sweep is a list of :class:`Experiment` s.  Each runs as one Ray task that calls a
runner function (the simulation's ``run_simulation``, passed in by the
caller) and writes its run directory ``<results-dir>/runs/<name>``, where the name is
the experiment's label plus a digest of its config.  Rerunning a sweep therefore

* skips every experiment whose run directory holds ``results.json`` (finished),
* continues every experiment that has a checkpoint (``resume=true``),
* and starts the others afresh.

An experiment may have a ``parent``: an upstream run (a clean pretraining, or the
training that several defenses start from) whose ``checkpoints/trained.pt`` becomes
its ``init-checkpoint``.  Parents are deduplicated by name, so work shared by many
experiments is done once, and run before their children.

Each experiment is itself a Flower simulation whose client actors take CPUs of the
same cluster, so the driver keeps at most ``parallel`` tasks in flight (1 on a local
machine) and caps each simulation's actor pool at its share of the cluster.  With
``RAY_ADDRESS`` set the sweep joins that cluster; otherwise it starts a local Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .config import CORE_SETTINGS, ExperimentConfig, UserError
from .datasets import resolve_data_dir
from .training import share_gpus_with_workers

Runner = Callable[[ExperimentConfig], Path]

RUNS_DIR = "runs"
LOGS_DIR = "logs"
# the keys a sweep sets for each run: core keys of the role "sweep" (fl_backdoor.config.ROLES); the other key lists
# here come from the roles when used, as components declare keys of those roles too
SWEEP_KEYS = tuple(s.key for s in CORE_SETTINGS if "sweep" in s.role_names)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Experiment:
    """One run of a sweep: a label, its flat config, and optionally the run it starts from."""

    label: str
    config: Mapping[str, Any] = field(hash=False)
    parent: Experiment | None = None

    def __post_init__(self) -> None:
        if not _LABEL.match(self.label):
            raise UserError(f"experiment label '{self.label}': use letters, digits, '.', '_' and '-'")
        placed = sorted(k for k in self.config if k in SWEEP_KEYS)
        if placed:
            raise UserError(f"experiment '{self.label}': the sweep sets {', '.join(placed)} itself")
        ExperimentConfig.from_flat(self.config)  # a bad value fails here, before anything runs

    @cached_property
    def cfg(self) -> ExperimentConfig:
        """The validated config."""
        return ExperimentConfig.from_flat(self.config)

    @cached_property
    def digest(self) -> str:
        """Hash of everything the run computes: its config (all keys, defaults included) and its parent.

        A training-only run ignores the defense settings, so they are not part of its identity:
        defenses that differ only in those settings start from the same trained model.  Keys added
        later count only when set away from their defaults (ExperimentConfig.added_defaults).
        """
        flat = self.cfg.to_flat()
        # placement keys are not part of what a run computes; a training-only run ignores the defense settings
        ignored = ExperimentConfig.keys_with_role("placement") + (
            ExperimentConfig.keys_with_role("cleansing") if self.cfg.defense == "train-only" else ())
        added = ExperimentConfig.added_defaults()
        identity = {k: v for k, v in flat.items() if k not in ignored and not (k in added and v == added[k])}
        identity["parent"] = self.parent.name if self.parent else ""
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        """Run directory name: label and digest, the same on every rerun of the same experiment."""
        return f"{self.label}-{self.digest}"

    def child(self, label: str, **changes: Any) -> Experiment:
        """An experiment starting from this one's trained model: same config with changes, no new rounds
        unless ``num-rounds`` is given (kebab- or snake-case keys)."""
        values = {**self.config, "num-rounds": 0}
        values.update({k.replace("_", "-"): v for k, v in changes.items()})
        return Experiment(label, values, parent=self)


def clean_pretraining(config: Mapping[str, Any], rounds: int, label: str = "pretrain") -> Experiment:
    """The attack-free training that experiments differing only in attack or defense can share.

    Attack and defense settings are reset to the schema's defaults and nobody poisons;
    everything that shapes clean training (data, partition, attacker ids, model,
    optimiser, federation) is kept, so the digest is the same for all of them.
    """
    cfg = ExperimentConfig.from_flat(config)
    defaults = ExperimentConfig().to_flat()  # a plugin's keys only where given: at their defaults they stay out
    schema = ExperimentConfig.schema()
    values = {k: v for k, v in config.items()}
    for key in ExperimentConfig.keys_with_role("attack") + ExperimentConfig.keys_with_role("cleansing"):
        if key in defaults or key in values:
            values[key] = schema[key].default
    if cfg.attack_mode == "victim" and cfg.attackers and values["attack-label"] == cfg.victim_label:
        values["attack-label"] = (cfg.victim_label + 1) % 10  # any valid label: nobody poisons
    values.update({"num-rounds": rounds, "attack-rounds": "none", "defense": "train-only"})
    return Experiment(label, values)


@dataclass
class SweepOutcome:
    """Run directories of the finished experiments, and why the others failed."""

    results_dir: Path
    finished: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # finished before this invocation
    nodes: dict[str, str] = field(default_factory=dict)  # experiment -> Ray node id it ran on (this invocation)

    def run_dir(self, experiment: Experiment) -> Path | None:
        """The experiment's run directory, or None when it did not finish."""
        return self.finished.get(experiment.name)

    def results(self, experiment: Experiment) -> dict[str, Any] | None:
        """The experiment's results.json, or None when it did not finish."""
        run_dir = self.run_dir(experiment)
        return json.loads((run_dir / "results.json").read_text()) if run_dir else None


def with_parents(experiments: Sequence[Experiment]) -> list[Experiment]:
    """All experiments and their ancestors, each once, every parent before its children."""
    ordered: dict[str, Experiment] = {}

    def visit(exp: Experiment) -> None:
        if exp.name in ordered:
            return
        if exp.parent is not None:
            visit(exp.parent)
        ordered[exp.name] = exp

    for exp in experiments:
        visit(exp)
    return list(ordered.values())


def is_finished(run_dir: Path) -> bool:
    """A run is finished once its results.json exists (written last, atomically)."""
    return (run_dir / "results.json").is_file()


def submission(exp: Experiment, runs_dir: Path) -> dict[str, Any]:
    """The flat config to run ``exp`` with: continue its checkpointed run, or start it afresh.

    A run directory without a checkpoint (killed before its first round finished) holds
    nothing worth keeping; it is removed so that the run can take its name again.
    """
    run_dir = runs_dir / exp.name
    if (run_dir / "checkpoints" / "latest.pt").is_file() and (run_dir / "config.json").is_file():
        return {"output-dir": str(runs_dir), "run-name": exp.name, "resume": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    flat = {**exp.config, "output-dir": str(runs_dir), "run-name": exp.name,
            "data-dir": str(resolve_data_dir(str(exp.config.get("data-dir", ""))))}
    if exp.parent is not None:
        flat["init-checkpoint"] = str(runs_dir / exp.parent.name / "checkpoints" / "trained.pt")
    return flat


# --- inside a Ray worker ----------------------------------------------------------------------------
@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors included) to a log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {os.uname().nodename} (pid {os.getpid()})\n")
        log.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextmanager
def actor_limit(limit: int) -> Iterator[None]:
    """Cap the size of the Flower simulation's actor pool.

    Flower 1.41 sizes the pool from the whole cluster's CPUs, so two simulations on one
    cluster would each ask for every CPU and could wait on each other's actors forever.
    Capped at its share, each simulation holds only the CPUs it was given.
    """
    from flwr.simulation.ray_transport import ray_actor

    original = ray_actor.pool_size_from_resources
    ray_actor.pool_size_from_resources = lambda client_resources: min(limit, original(client_resources))
    try:
        yield
    finally:
        ray_actor.pool_size_from_resources = original


@contextmanager
def _stay_connected() -> Iterator[None]:
    """Ignore ray.shutdown(): Flower calls it when a simulation ends, which in a task would cut
    the worker off the cluster before it has returned the task's result."""
    import ray

    shutdown = ray.shutdown
    ray.shutdown = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ray.shutdown = shutdown


def run_experiment(runner: Runner, flat: dict[str, Any], log_path: str, max_actors: int) -> tuple[str, str]:
    """Body of one sweep task: run the experiment with its output in its log.

    Returns the run directory and the id of the Ray node the task ran on.
    """
    import ray

    with _output_to(Path(log_path)), actor_limit(max_actors), _stay_connected():
        return str(runner(ExperimentConfig.from_flat(flat))), ray.get_runtime_context().get_node_id()


# --- the driver --------------------------------------------------------------------------------------
def connect() -> tuple[float, bool]:
    """Join the cluster named by RAY_ADDRESS, or start a local Ray; returns (cluster CPUs, on a cluster).

    Worker output goes to each experiment's log file, not to this terminal, which
    shows the progress bar instead.
    """
    import logging

    import ray

    on_cluster = bool(os.environ.get("RAY_ADDRESS"))
    if not ray.is_initialized():
        share_gpus_with_workers()
        # workers import what this process imports (the project, a test module) from the same paths
        env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        ray.init(address=os.environ["RAY_ADDRESS"] if on_cluster else "local", log_to_driver=False,
                 logging_level=logging.WARNING, runtime_env={"env_vars": env},
                 include_dashboard=None if on_cluster else False)  # None (the default): the cluster's own
    return float(ray.cluster_resources().get("CPU", 1.0)), on_cluster


def default_parallel(experiments: Sequence[Experiment], cpus: float, on_cluster: bool) -> int:
    """1 on a local machine; on a cluster, as many experiments as fit with one CPU slot per client."""
    if not on_cluster or not experiments:
        return 1
    widest = max(e.cfg.client_cpus * e.cfg.num_clients for e in experiments)
    return max(1, int(cpus // widest))


def actors_for(exp: Experiment, cpus: float, parallel: int) -> int:
    """Actor pool of one simulation: its share of the cluster, at most one actor per client."""
    cfg = exp.cfg
    return max(1, min(cfg.num_clients, math.floor(cpus / parallel / cfg.client_cpus + 1e-9)))


def finished_runs(experiments: Sequence[Experiment], results_dir: str | Path) -> SweepOutcome:
    """The outcome of the experiments that have finished already, running nothing."""
    results_dir = Path(results_dir).expanduser().resolve()
    outcome = SweepOutcome(results_dir)
    for exp in with_parents(experiments):
        if is_finished(results_dir / RUNS_DIR / exp.name):
            outcome.finished[exp.name] = results_dir / RUNS_DIR / exp.name
            outcome.skipped.append(exp.name)
    return outcome


def run_sweep(experiments: Sequence[Experiment], runner: Runner, results_dir: str | Path, *,
              parallel: int | None = None, progress: bool = True) -> SweepOutcome:
    """Run every experiment (and its parents) as Ray tasks, at most ``parallel`` at once.

    Finished runs are skipped, interrupted ones resumed.  An experiment that fails is
    reported with its log file; its children are not run; the others go on.
    """
    from tqdm import tqdm

    results_dir = Path(results_dir).expanduser().resolve()
    runs_dir, logs_dir = results_dir / RUNS_DIR, results_dir / LOGS_DIR
    jobs = with_parents(experiments)
    outcome = finished_runs(jobs, results_dir)
    todo = [e for e in jobs if e.name not in outcome.finished]
    if not todo:
        return outcome
    if parallel is not None and parallel < 1:
        raise UserError(f"--parallel: must be >= 1, got {parallel}")
    runs_dir.mkdir(parents=True, exist_ok=True)

    import ray

    cpus, on_cluster = connect()
    parallel = parallel or default_parallel(todo, cpus, on_cluster)
    # SPREAD: on a multi-node cluster the experiments start on different nodes, not all on the head
    task = ray.remote(num_cpus=0, max_calls=1, scheduling_strategy="SPREAD")(run_experiment)
    bar = tqdm(total=len(jobs), initial=len(outcome.finished), unit="run", disable=not progress,
               desc=f"sweep ({parallel} at once)", dynamic_ncols=True)
    in_flight: dict[Any, tuple[Experiment, float]] = {}
    waiting = list(todo)
    try:
        while waiting or in_flight:
            for exp in list(waiting):
                parent = exp.parent.name if exp.parent else None
                if parent in outcome.failed:
                    waiting.remove(exp)
                    outcome.failed[exp.name] = f"not run: its parent {parent} failed"
                    bar.update(1)
                elif len(in_flight) < parallel and (parent is None or parent in outcome.finished):
                    waiting.remove(exp)
                    resumed = (runs_dir / exp.name / "checkpoints" / "latest.pt").is_file()
                    ref = task.remote(runner, submission(exp, runs_dir), str(logs_dir / f"{exp.name}.log"),
                                      actors_for(exp, cpus, parallel))
                    in_flight[ref] = (exp, time.perf_counter())
                    bar.write(f"{'resuming' if resumed else 'started'} {exp.name}")
            bar.set_postfix_str(", ".join(e.label for e, _ in in_flight.values()), refresh=True)
            if not in_flight:
                continue
            done, _ = ray.wait(list(in_flight), num_returns=1)
            exp, started = in_flight.pop(done[0])
            try:
                run_dir, node = ray.get(done[0])
                outcome.finished[exp.name], outcome.nodes[exp.name] = Path(run_dir), node
                where = f" on node {node[:8]}" if on_cluster else ""
                bar.write(f"finished {exp.name} in {time.perf_counter() - started:.0f}s{where}")
            except Exception as exc:  # any failure of a task is reported, the sweep goes on
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
                outcome.failed[exp.name] = f"{reason} (log: {logs_dir / (exp.name + '.log')})"
                bar.write(f"FAILED {exp.name}: {outcome.failed[exp.name]}")
            bar.update(1)
    except KeyboardInterrupt:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return outcome
