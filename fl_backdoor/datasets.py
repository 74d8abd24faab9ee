"""MNIST, Fashion-MNIST and CIFAR-10 from their official on-disk formats, held in memory.

Layout under the data directory (the official file names, as the publishers ship them)::

    mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    cifar-10-batches-py/{data_batch_1..5,test_batch}      (from cifar-10-python.tar.gz)

A missing dataset is downloaded with an MD5 check, into a temporary directory first, so
an interrupted download never leaves a file under a final name.  A file that cannot be
read whole (cut short, damaged) is reported in one line; with download allowed, an
MNIST/Fashion-MNIST file is set aside as ``<name>.corrupt`` and fetched again.  Each split is loaded once per
process and kept as tensors: images float32 in [0, 1] (N, C, H, W), labels int64.
Offline copies (``../shared/data`` on the development machines) are linked in with
``python -m fl_backdoor.datasets --offline-copy DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import os
import pickle
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import UserError

DATA_DIR_ENV = "FL_BACKDOOR_DATA_DIR"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Official download locations and MD5 sums of the compressed files.
_IDX_SOURCES = {
    "mnist": (
        ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class DatasetUnavailable(UserError):
    """A dataset is neither on disk nor downloadable; the message says where and what."""


class CorruptFile(DatasetUnavailable):
    """A dataset file exists but cannot be read whole (an interrupted download, a damaged copy)."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path} is truncated or corrupt ({detail}); delete it and run again "
                         f"(with download=true it is fetched again)")
        self.path = path


@dataclass(frozen=True)
class Split:
    """One split of a dataset held in memory."""

    x: torch.Tensor  # float32, (N, C, H, W), values in [0, 1]
    y: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor | np.ndarray) -> Split:
        """The samples at these indices (a copy)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(self.x[index], self.y[index])


def resolve_data_dir(data_dir: str = "") -> Path:
    """The data directory: the argument, else $FL_BACKDOOR_DATA_DIR, else ./data (absolute)."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV, "") or "data"
    return Path(chosen).expanduser().resolve()


@functools.lru_cache(maxsize=8)
def load_split(dataset: str, data_dir: str, train: bool, download: bool = True) -> Split:
    """Load one split once per process (cached); download it first when missing and allowed."""
    root = resolve_data_dir(data_dir)
    split = "train" if train else "test"
    if dataset in _IDX_SOURCES:
        folder = root / dataset
        names = _IDX_FILES[split]
        for attempt in (1, 2):  # a corrupt file is fetched again once
            _ensure_files(dataset, folder, names, download)
            try:
                images, labels = _read_idx(folder / names[0]), _read_idx(folder / names[1])
                break
            except CorruptFile as exc:
                if not download or attempt == 2:
                    raise
                aside = exc.path.with_name(exc.path.name + ".corrupt")
                os.replace(exc.path, aside)  # kept, not deleted: it may be the user's only copy
                print(f"{exc.path} is truncated or corrupt; moved to {aside.name}, downloading it again", flush=True)
        x = torch.from_numpy(images).unsqueeze(1)
    elif dataset == "cifar10":
        folder = root / _CIFAR_DIR
        _ensure_cifar(folder, download)
        images, labels = _read_cifar(folder, _CIFAR_FILES[split])
        x = torch.from_numpy(images)
    else:
        raise ValueError(f"unknown dataset '{dataset}'")
    x = x.to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    if x.shape[0] != y.shape[0]:
        raise DatasetUnavailable(f"{folder}: {x.shape[0]} images but {y.shape[0]} labels in the {split} split")
    return Split(x.contiguous(), y)


def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file as a uint8 array; a cut or damaged file raises CorruptFile."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, OSError, zlib.error) as exc:  # gzip: cut short (EOFError), bad header or CRC (OSError)
        raise CorruptFile(path, f"{exc.__class__.__name__}: {exc}") from None
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise CorruptFile(path, "not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise CorruptFile(path, f"{len(data) - offset} of {expected} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _read_cifar(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        try:
            with open(folder / name, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
            raise CorruptFile(folder / name, f"{exc.__class__.__name__}: {exc}") from None
    return np.concatenate(xs), np.concatenate(ys)


def _missing_message(folder: Path, names: list[str] | tuple[str, ...], reason: str) -> str:
    return (f"dataset files missing in {folder}: expected {', '.join(names)} ({reason}); "
            f"set data-dir or ${DATA_DIR_ENV} to a directory holding them")


def _ensure_files(dataset: str, folder: Path, names: tuple[str, ...], download: bool) -> None:
    missing = [n for n in names if not (folder / n).exists()]
    if not missing:
        return
    if not download:
        raise DatasetUnavailable(_missing_message(folder, names, "download disabled"))
    mirrors, md5s = _IDX_SOURCES[dataset]
    from torchvision.datasets.utils import download_url  # retries, and raises on an MD5 mismatch

    for name in missing:
        errors = []
        for mirror in mirrors:
            try:
                with _staging(folder) as staging:
                    download_url(mirror + name, str(staging), filename=name, md5=md5s[name])
                    os.replace(staging / name, folder / name)
                break
            except Exception as exc:  # any network failure means: try the next mirror
                errors.append(f"{mirror}: {exc.__class__.__name__}")
        else:
            raise DatasetUnavailable(_missing_message(folder, names, "download failed: " + "; ".join(errors)))


def _ensure_cifar(folder: Path, download: bool) -> None:
    names = _CIFAR_FILES["train"] + _CIFAR_FILES["test"]
    if all((folder / n).exists() for n in names):
        return
    if not download:
        raise DatasetUnavailable(_missing_message(folder, names, "download disabled"))
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        with _staging(folder.parent) as staging:
            download_and_extract_archive(_CIFAR_URL, str(staging), md5=_CIFAR_MD5)
            if folder.exists():  # an incomplete earlier copy: kept beside, not deleted
                os.replace(folder, folder.with_name(folder.name + ".incomplete"))
            os.replace(staging / _CIFAR_DIR, folder)
    except Exception as exc:
        reason = f"download failed: {exc.__class__.__name__}"
        raise DatasetUnavailable(_missing_message(folder, names, reason)) from None


@contextlib.contextmanager
def _staging(parent: Path) -> Iterator[Path]:
    """A temporary directory beside the final files: downloads land there and are renamed into
    place only once complete and verified, so an interrupted download leaves no file under a final name."""
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=parent) as tmp:
        yield Path(tmp)


def link_offline_copy(source: Path, data_dir: Path, cifar: bool = True) -> None:
    """Make data_dir hold the offline copies in ``source`` in the official layout.

    MNIST and Fashion-MNIST folders are symlinked; with ``cifar``, CIFAR-10 is written
    in the official python format by ``source/prepare_cifar10.py`` (about 10 s).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in _IDX_SOURCES:
        target = data_dir / name
        if (source / name).is_dir() and not target.exists():
            target.symlink_to((source / name).resolve(), target_is_directory=True)
    prepare = source / "prepare_cifar10.py"
    if cifar and prepare.exists() and not (data_dir / _CIFAR_DIR / "test_batch").exists():
        subprocess.run([sys.executable, str(prepare), str(data_dir)], check=True)


def _main() -> None:
    parser = argparse.ArgumentParser(description="Prepare the data directory.")
    parser.add_argument("--offline-copy", type=Path, required=True,
                        help="directory with offline copies (mnist/, fashion-mnist/, prepare_cifar10.py)")
    parser.add_argument("--data-dir", default="", help=f"target directory (default ${DATA_DIR_ENV} or ./data)")
    args = parser.parse_args()
    target = resolve_data_dir(args.data_dir)
    link_offline_copy(args.offline_copy, target)
    print(f"data directory ready: {target}")


if __name__ == "__main__":
    _main()
