"""A run's output directory: config, versions, metrics, checkpoints, plots, results.

Every file is written atomically (temporary file + rename), so a run killed at any
moment leaves either the old or the new version of each file, never half of one.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import torch

from .config import ExperimentConfig, UserError


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable or does not fit the model."""

_PACKAGES = ("fl-backdoor", "flwr", "torch", "torchvision", "ray", "numpy", "matplotlib")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write dict rows as CSV; columns in first-seen order."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file written by write_csv (empty when absent)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def processor() -> str:
    """The processor's vendor, family and model: torch's math libraries pick kernels by these, not only by
    instruction set, so two machines with the same packages can differ in a float32 run's last digits."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return platform.processor()
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return " ".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model"))


def package_versions() -> dict[str, str]:
    """Versions of Python, the platform and processor, the key packages and the git commit."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "processor": processor()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode == 0:
            out["git-commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], **meta: Any) -> None:
    """Atomically save a model state dict with metadata (round, phase, mask, config...)."""
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state.items()}, **meta}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint; a clear error when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # tensors and plain values only: a shared checkpoint cannot run code when loaded (no pickle objects)
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds objects other than tensors and plain values; it is not loaded, "
                              "since loading them could run code") from None
    except Exception as exc:  # torch raises many kinds for a bad file
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or "state_dict" not in data:
        raise CheckpointError(f"{path} is not an fl-backdoor checkpoint (no state_dict)")
    return data


class RunDirectoryInUse(UserError):
    """Another process is writing the run directory."""


class RunDirectory:
    """The directory of one run and the files in it.

    A run holds an exclusive lock on ``<dir>/.lock`` while it writes, so two runs (two
    resumes of one run, a sweep started twice) never interleave their files.  The
    operating system drops the lock when the process ends, killed or not.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Take the directory's lock, or raise RunDirectoryInUse naming the process that holds it."""
        handle = open(self.path / ".lock", "a+")  # noqa: SIM115 -- held open for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirectoryInUse(f"{self.path} is being written by another run (pid {holder}); wait for it "
                                    f"to end, or use another run-name") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Give the lock up (the run is over)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @classmethod
    def create(cls, cfg: ExperimentConfig) -> RunDirectory:
        """Make (or, with resume, reopen) the run's directory and record config and versions.

        A resumed run keeps the config.json and versions.json it started with (the record of how
        it began, its init-checkpoint included) and adds each resume's time and versions to
        resumes.json.
        """
        base = Path(cfg.output_dir).expanduser().resolve()
        if cfg.resume:
            path = base / cfg.run_name
            if not (path / "config.json").is_file():
                raise CheckpointError(f"resume: no run to continue in {path}")
        else:
            # a phase list names the directory with '+' between phases and no '?' (probes)
            defense = cfg.defense.replace("?", "").replace(",", "+").replace(" ", "")
            name = cfg.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.dataset}-{defense}"
            base.mkdir(parents=True, exist_ok=True)
            path, suffix = base / name, 1
            while True:
                try:
                    path.mkdir()  # atomic: of two runs started at once with one name, one gets name-2
                    break
                except FileExistsError:
                    suffix += 1
                    path = base / f"{name}-{suffix}"
        run = cls(path)
        run.lock()
        if cfg.resume:
            resumes = path / "resumes.json"
            earlier = json.loads(resumes.read_text()) if resumes.is_file() else []
            write_json(resumes, [*earlier, {"time": time.strftime("%Y-%m-%d %H:%M:%S"), **package_versions()}])
        else:
            write_json(path / "config.json", cfg.to_flat())
            write_json(path / "versions.json", package_versions())
        return run

    @property
    def metrics_csv(self) -> Path:
        """Per-round metrics of training and fine-tuning."""
        return self.path / "metrics.csv"

    def checkpoint(self, name: str) -> Path:
        """Path of a named checkpoint (e.g. 'latest', 'trained', 'final')."""
        return self.path / "checkpoints" / f"{name}.pt"
