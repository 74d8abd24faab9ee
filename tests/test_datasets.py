"""Loading the official on-disk formats, and clear errors when files are missing."""

import gzip
from pathlib import Path

import pytest
import torch

from fl_backdoor.datasets import CorruptFile, DatasetUnavailable, load_split


@pytest.mark.parametrize("name, n_train, shape", [
    ("mnist", 60000, (1, 28, 28)), ("fashion-mnist", 60000, (1, 28, 28)), ("cifar10", 50000, (3, 32, 32)),
])
def test_official_formats_load_as_tensors(data_dir, name, n_train, shape):
    train = load_split(name, data_dir, True)
    test = load_split(name, data_dir, False)
    assert len(train) == n_train and len(test) == 10000
    assert tuple(train.x.shape[1:]) == shape and train.x.dtype == torch.float32
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    counts = torch.bincount(test.y, minlength=10)
    assert counts.numel() == 10 and int(counts.min()) >= 800
    assert load_split(name, data_dir, True) is train, "loaded once per process"


@pytest.mark.parametrize("name, first", [("mnist", [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
                                         ("fashion-mnist", [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])])
def test_idx_labels_in_official_order(data_dir, name, first):
    assert load_split(name, data_dir, False).y[:10].tolist() == first


def test_missing_files_give_one_line_naming_dir_and_files(tmp_path):
    with pytest.raises(DatasetUnavailable) as err:
        load_split("fashion-mnist", str(tmp_path), True, download=False)
    message = str(err.value)
    assert str(tmp_path / "fashion-mnist") in message and "train-images-idx3-ubyte.gz" in message
    assert "\n" not in message


def test_truncated_idx_file_is_reported(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(header + bytes(100))
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(10))
    with pytest.raises(DatasetUnavailable, match="truncated"):
        load_split("mnist", str(tmp_path), True, download=False)


def _copy_mnist_test_split(data_dir: str, target: Path) -> Path:
    folder = target / "mnist"
    folder.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes((Path(data_dir) / "mnist" / name).read_bytes())
    return folder


def test_a_gzip_cut_short_is_one_line_naming_the_file_and_is_left_in_place(data_dir, tmp_path):
    folder = _copy_mnist_test_split(data_dir, tmp_path)
    cut = folder / "t10k-images-idx3-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[:500_000])  # what an interrupted first download leaves
    with pytest.raises(CorruptFile) as err:
        load_split("mnist", str(tmp_path), False, download=False)
    message = str(err.value)
    assert str(cut) in message and "truncated or corrupt" in message and "\n" not in message
    assert cut.stat().st_size == 500_000, "download=false never touches the user's files"


def test_with_download_a_corrupt_file_is_kept_aside_and_fetched_again(data_dir, tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv

    folder = _copy_mnist_test_split(data_dir, tmp_path)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(40))  # a gzip header and garbage
    fetched = []

    def fake_download(url, root, filename, md5):
        fetched.append((url, Path(root).parent == folder))
        (Path(root) / filename).write_bytes((Path(data_dir) / "mnist" / filename).read_bytes())

    monkeypatch.setattr(tv, "download_url", fake_download)
    split = load_split("mnist", str(tmp_path), False, download=True)
    assert len(split) == 10_000 and split.y[:3].tolist() == [7, 2, 1]
    assert len(fetched) == 1 and fetched[0][0].endswith("t10k-labels-idx1-ubyte.gz")
    assert fetched[0][1], "downloaded into a temporary directory beside the final file"
    assert (folder / "t10k-labels-idx1-ubyte.gz.corrupt").read_bytes() == b"\x1f\x8b" + bytes(40)


def test_an_interrupted_download_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv

    def broken_download(url, root, filename, md5):
        (Path(root) / filename).write_bytes(b"\x1f\x8b partial")
        raise ConnectionError("connection reset")

    monkeypatch.setattr(tv, "download_url", broken_download)
    with pytest.raises(DatasetUnavailable, match=r"download failed: .*ConnectionError"):
        load_split("fashion-mnist", str(tmp_path), True, download=True)
    assert list((tmp_path / "fashion-mnist").iterdir()) == [], "no partial file, no staging directory"
