"""Loading the official on-disk formats, and clear errors when files are missing."""

import gzip

import pytest
import torch

from fl_backdoor.datasets import DatasetUnavailable, load_split


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
