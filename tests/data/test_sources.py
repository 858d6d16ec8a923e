"""Offline sources: digits, synthetic, Fashion-MNIST idx files; the registry and its errors."""

from __future__ import annotations

import gzip
import sys

import numpy as np
import pytest
import torch

from resam_flower.data import DataSourceError, DataSplit, available_datasets, load_dataset
from resam_flower.data.sources import read_idx


def _nearest_mean_accuracy(train: DataSplit, test: DataSplit) -> float:
    """Accuracy of the nearest-class-mean classifier fitted on ``train`` (a learnability probe)."""
    x, xt = train.images.flatten(1), test.images.flatten(1)
    means = torch.stack([x[train.labels == c].mean(0) for c in range(train.num_classes)])
    pred = torch.cdist(xt, means).argmin(1)
    return (pred == test.labels).float().mean().item()


# -- digits -------------------------------------------------------------------------------------
def test_digits_shapes_and_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.num_classes == 10 and set(train.labels.tolist()) == set(range(10))
    assert train.in_shape == (1, 8, 8)
    # train and test are disjoint: no test image appears in train
    tr = {tuple(r) for r in train.images.flatten(1).tolist()}
    assert sum(tuple(r) in tr for r in test.images.flatten(1).tolist()) < 5  # sklearn has a few duplicates


def test_digits_normalised_and_raw():
    raw = load_dataset("digits", "train", normalize=False)
    assert raw.images.min().item() == 0.0 and raw.images.max().item() == 1.0
    norm = load_dataset("digits", "train")
    assert abs(norm.images.mean().item()) < 0.05 and abs(norm.images.std().item() - 1) < 0.05
    assert torch.allclose(norm.images, (raw.images - 0.3053) / 0.3760, atol=1e-6)


def test_digits_is_learnable():
    assert _nearest_mean_accuracy(load_dataset("digits"), load_dataset("digits", "test")) > 0.85


def test_digits_without_sklearn_explains(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataSourceError, match="pip install scikit-learn"):
        load_dataset("digits", "train")


# -- synthetic ----------------------------------------------------------------------------------
def test_synthetic_cifar_shape_and_balance():
    d = load_dataset("synthetic-cifar", "train", num_train=200)
    assert d.images.shape == (200, 3, 32, 32) and d.num_classes == 10
    assert d.class_counts().tolist() == [20] * 10
    assert abs(d.images.std().item() - 1.0) < 0.05


def test_synthetic_is_seeded():
    a = load_dataset("synthetic", "train", num_train=50, seed=3)
    b = load_dataset("synthetic", "train", num_train=50, seed=3, shape=[1, 28, 28])  # same, list shape
    c = load_dataset("synthetic", "train", num_train=50, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_synthetic_learnable_and_separation_zero_is_chance():
    opts = dict(shape=(1, 12, 12), num_classes=4, num_train=400, num_test=400, seed=1)
    easy = [load_dataset("synthetic", s, separation=0.5, **opts) for s in ("train", "test")]
    assert _nearest_mean_accuracy(*easy) > 0.95
    hard = [load_dataset("synthetic", s, separation=0.0, **opts) for s in ("train", "test")]
    assert _nearest_mean_accuracy(*hard) < 0.4


def test_synthetic_train_and_test_differ_but_share_classes():
    tr = load_dataset("synthetic", "train", num_train=100, num_test=100)
    te = load_dataset("synthetic", "test", num_train=100, num_test=100)
    assert not torch.equal(tr.images, te.images)
    assert _nearest_mean_accuracy(tr, te) > 0.9


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_classes=1), "num_classes must be >= 2"),
        (dict(shape=(3, 32)), r"shape must be \(C, H, W\)"),
        (dict(separation=-1.0), "separation must be >= 0"),
        (dict(separation=0.0, noise=0.0), "cannot both be 0"),
    ],
)
def test_synthetic_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("synthetic", "train", **kwargs)


# -- fashion-mnist (tiny idx files) ----------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def fashion_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion"
    folder.mkdir()
    files = {}
    for prefix, n in (("train", 12), ("t10k", 6)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))  # not gzipped: both work
        files[prefix] = (images, labels)
    return folder, files


def test_fashion_mnist_from_folder(fashion_dir):
    folder, files = fashion_dir
    d = load_dataset("fashion-mnist", "train", normalize=False, data_dir=str(folder))
    images, labels = files["train"]
    assert d.images.shape == (12, 1, 28, 28)
    assert torch.allclose(d.images[:, 0], torch.from_numpy(images / 255.0).float())
    assert d.labels.tolist() == labels.tolist()
    assert len(load_dataset("fashion_mnist", "test", data_dir=folder)) == 6  # alias, PathLike


def test_fashion_mnist_env_var(fashion_dir, monkeypatch):
    monkeypatch.setenv("RESAM_FASHION_MNIST_DIR", str(fashion_dir[0]))
    assert len(load_dataset("fmnist", "test")) == 6


def test_fashion_mnist_missing_names_the_fix(tmp_path):
    with pytest.raises(DataSourceError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", data_dir=str(tmp_path))


def test_read_idx_rejects_truncated(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(_idx(np.zeros((4, 3), dtype=np.uint8))[:-2])
    with pytest.raises(DataSourceError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataSourceError, match="not an idx file"):
        read_idx(path)


# -- registry ----------------------------------------------------------------------------------
def test_available_names():
    assert available_datasets() == [
        "cifar10", "digits", "fashion-mnist", "mnist", "synthetic", "synthetic-cifar",
    ]  # fmt: skip


def test_unknown_dataset_and_option():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'; available: cifar10"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="takes no option"):
        load_dataset("digits", "train", colour=True)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_dataset("digits", "valid")


def test_cached_per_process_and_kebab_options():
    a = load_dataset("synthetic", "train", num_train=30)
    assert load_dataset("synthetic", "train", **{"num-train": 30}) is a
    assert load_dataset("synthetic", "train", num_train=31) is not a


def test_subset_copies_and_keeps_classes():
    d = load_dataset("digits", "train")
    s = d.subset([0, 2, 4])
    assert len(s) == 3 and s.num_classes == 10 and torch.equal(s.labels, d.labels[[0, 2, 4]])
    s.images.zero_()
    assert d.images[0].abs().sum() > 0
    assert "n=3" in repr(s)
