"""Partitioning with flwr-datasets partitioners: sizes, label skew, reproducibility, caching."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from datasets import Dataset

from resam_flower.data import label_histogram, load_dataset, load_partition, partition

partition_module = importlib.import_module("resam_flower.data.partition")


def _labels(n_per_class: int = 100, num_classes: int = 10, seed: int = 0) -> torch.Tensor:
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def _assert_exact_cover(parts: list[torch.Tensor], n: int) -> None:
    allidx = torch.cat(parts)
    assert allidx.dtype == torch.int64
    assert torch.equal(allidx.sort().values, torch.arange(n)), "every row exactly once"


def _skew(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int = 10) -> float:
    """Mean total-variation distance between each part's label distribution and the global one."""
    h = label_histogram(labels, parts, num_classes).double()
    p = h / h.sum(1, keepdim=True)
    g = torch.bincount(labels, minlength=num_classes).double() / len(labels)
    return 0.5 * (p - g).abs().sum(1).mean().item()


def test_iid_sizes_balanced_and_cover():
    y = _labels()
    parts = partition(y, 4, "iid", seed=0)
    assert [len(p) for p in parts] == [250, 250, 250, 250]
    _assert_exact_cover(parts, 1000)
    assert _skew(y, parts) < 0.1
    assert [len(p) for p in partition(y, 3, "iid", seed=0)] == [334, 333, 333]


def test_iid_is_random_not_contiguous():
    y = torch.zeros(100, dtype=torch.int64)
    parts = partition(y, 2, "iid", seed=0)
    assert not torch.equal(parts[0].sort().values, torch.arange(50))


@pytest.mark.parametrize(
    "name,params",
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.5}),
        ("pathological", {"classes_per_partition": 2}),
        ("gamma-similarity", {"gamma": 0.3}),
    ],
)
def test_reproducible_with_seed_and_cover(name, params):
    y = _labels()
    a = partition(y, 10, name, seed=7, **params)
    b = partition(y.numpy(), 10, name, seed=7, **params)  # numpy labels: same answer
    c = partition(y, 10, name, seed=8, **params)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert any(not torch.equal(u, v) for u, v in zip(a, c, strict=True))
    _assert_exact_cover(a, len(y))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    y = _labels()
    skews = [
        _skew(y, partition(y, 10, "dirichlet", alpha=a, seed=0, min_partition_size=1)) for a in (100, 1, 0.1)
    ]
    assert skews[0] < 0.1 < skews[1] < skews[2], skews
    assert skews[2] > 0.5


def test_pathological_classes_per_partition():
    y = _labels()
    parts = partition(y, 10, "pathological", classes_per_partition=3, seed=0)
    h = label_histogram(y, parts, 10)
    assert ((h > 0).sum(1) == 3).all()
    # "first-deterministic": partition i always holds class i (mod the number of classes)
    assert all(h[i, i] > 0 for i in range(10))


def test_pathological_deterministic_assignment():
    y = _labels()
    with pytest.warns(UserWarning, match="will NOT be used"):  # flwr-datasets warns: classes 6-9 unused
        parts = partition(y, 5, "pathological", classes_per_partition=2, class_assignment="deterministic")
    h = label_histogram(y, parts, 10)
    assert [torch.nonzero(row).flatten().tolist() for row in h] == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]


def test_gamma_extremes():
    y = _labels()
    iid = partition(y, 10, "gamma-similarity", gamma=1.0, seed=0)
    sorted_ = partition(y, 10, "gamma-similarity", gamma=0.0, seed=0)
    assert _skew(y, iid) < 0.15
    # gamma = 0 with K = number of classes: one class per partition, 100 rows each
    h = label_histogram(y, sorted_, 10)
    assert torch.equal(h, 100 * torch.eye(10, dtype=torch.int64))


def test_accepts_datasplit_and_hf_dataset():
    d = load_dataset("digits", "train")
    a = partition(d, 5, "dirichlet", alpha=1.0, seed=0)
    ds = Dataset.from_dict({"label": d.labels.numpy()})
    b = partition(ds, 5, "dirichlet", alpha=1.0, seed=0)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((3, "sorted"), {}, "unknown partitioner 'sorted'"),
        ((2000, "iid"), {}, "num_partitions must be <= 1000"),
        ((0, "iid"), {}, "num_partitions must be >= 1"),
        ((5, "dirichlet"), {"alpha": 0.0}, "alpha must be > 0"),
        ((5, "gamma"), {"gamma": 1.5}, "gamma must be <= 1"),
        ((5, "pathological"), {"classes_per_partition": 11}, "greater than the number of unique classes"),
        ((5, "pathological"), {"class_assignment": "any"}, "class_assignment must be"),
        ((5, "iid"), {"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_configuration(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        partition(_labels(), *args, **kwargs)


def test_load_partition_matches_partition_and_is_cached():
    d = load_dataset("digits", "train")
    parts = partition(d, 6, "dirichlet", alpha=0.5, seed=3)
    clients = [load_partition("digits", i, 6, "dirichlet", alpha=0.5, seed=3) for i in range(6)]
    for part, client in zip(parts, clients, strict=True):
        assert torch.equal(client.labels, d.labels[part]) and torch.equal(client.images, d.images[part])
        assert client.num_classes == 10
    info = partition_module._partition_cached.cache_info()
    assert info.misses == 1 and info.hits == 5, info
    assert clients[2].name == "digits:train[2/6]"
    # The rows are copied once per process: asking again returns the same split, no new copy.
    assert load_partition("digits", 2, 6, "dirichlet", alpha=0.5, seed=3) is clients[2]
    assert partition_module._partition_cached.cache_info().misses == 1


def test_load_partition_options_and_errors():
    c = load_partition(
        "synthetic", 1, 3, "iid", seed=0, dataset_options={"num-train": 30, "shape": (1, 8, 8)}
    )
    assert len(c) == 10 and c.in_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="partition_id must be <= 2"):
        load_partition("digits", 3, 3)
    with pytest.raises(ValueError, match="unknown partitioner"):
        load_partition("digits", 0, 3, "nope")


@pytest.mark.parametrize(
    "name,params",
    [
        ("dirichlet", {"alpha": 0.5}),
        ("pathological", {"classes_per_partition": 2}),
        ("gamma", {"gamma": 0.2}),
    ],
)
@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used")  # 7 parts, 10 classes, 2 per part
def test_fast_index_read_equals_public_api(name, params):
    # The fast path reads the partitioner's index table; it must agree with load_partition().
    y = _labels().numpy()
    p = partition_module.build_partitioner(name, 7, seed=5, **params)
    p.dataset = Dataset.from_dict({"label": y, "row": np.arange(len(y))}).with_format("arrow")
    fast = partition_module._partition_rows(p, 7, fast=True)
    slow = partition_module._partition_rows(p, 7, fast=False)
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))


def test_label_histogram_hand_example():
    y = torch.tensor([0, 1, 1, 2, 2, 2])
    h = label_histogram(y, [torch.tensor([0, 1]), torch.tensor([2, 3, 4, 5])], 3)
    assert h.tolist() == [[1, 1, 0], [0, 1, 3]]


def test_partition_is_independent_of_global_rng():
    y = _labels()
    np.random.seed(1)
    torch.manual_seed(1)
    a = partition(y, 4, "dirichlet", alpha=0.3, seed=0)
    np.random.seed(2)
    torch.manual_seed(2)
    b = partition(y, 4, "dirichlet", alpha=0.3, seed=0)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_load_partition_reads_the_split_from_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(partition_module, "cache_dir", lambda sub=None: tmp_path / sub)
    (tmp_path / "partitions").mkdir()

    def fresh(i):
        partition_module._partition_cached.cache_clear()
        partition_module._splits_cached.cache_clear()
        return load_partition("digits", i, 4, "dirichlet", alpha=0.3, seed=7)

    first = [fresh(i) for i in range(4)]
    files = list((tmp_path / "partitions").glob("*.npz"))
    assert len(files) == 1  # one file for the whole split
    calls = []
    monkeypatch.setattr(partition_module, "partition", lambda *a, **k: calls.append(a) or [])
    again = fresh(2)  # another process would see exactly this: no recomputation, same rows
    assert calls == [] and torch.equal(again.labels, first[2].labels)
    assert torch.equal(again.images, first[2].images)
    # A corrupted or truncated file is ignored and rewritten, never trusted.
    files[0].write_bytes(b"garbage")
    monkeypatch.undo()
    monkeypatch.setattr(partition_module, "cache_dir", lambda sub=None: tmp_path / sub)
    assert torch.equal(fresh(2).labels, first[2].labels)
    assert partition_module._read_cached_rows(files[0], 4, 1_000_000) is not None
    # Other arguments are another file.
    partition_module._partition_cached.cache_clear()
    load_partition("digits", 0, 4, "dirichlet", alpha=0.3, seed=8)
    assert len(list((tmp_path / "partitions").glob("*.npz"))) == 2


def test_importing_the_client_side_does_not_import_datasets():
    import subprocess
    import sys

    code = (
        "import sys, resam_flower.app.worker, resam_flower.data; "
        "print('datasets' in sys.modules, 'flwr_datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out
