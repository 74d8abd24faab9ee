"""Shared fixtures: the real datasets, prepared once from the offline copies beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fl_backdoor.datasets import DATA_DIR_ENV, link_offline_copy

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = ROOT.parent / "shared" / "data"


def _data_dir() -> Path:
    chosen = os.environ.get(DATA_DIR_ENV)
    if chosen:
        return Path(chosen)
    target = ROOT / "data"
    if OFFLINE.is_dir():
        link_offline_copy(OFFLINE, target)
    return target


@pytest.fixture(scope="session")
def data_dir() -> str:
    """Directory holding mnist/, fashion-mnist/ and cifar-10-batches-py/."""
    path = _data_dir()
    if not (path / "fashion-mnist").exists():
        pytest.skip(f"no datasets: set ${DATA_DIR_ENV} or place the offline copies at {OFFLINE}")
    return str(path)
