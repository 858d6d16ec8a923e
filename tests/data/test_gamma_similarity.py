"""GammaSimilarityPartitioner: ByzFL's gamma-similarity split as a flwr-datasets Partitioner."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner

from resam_flower.data import GammaSimilarityPartitioner
from resam_flower.data.gamma_similarity import gamma_similarity_indices


def _ds(labels) -> Dataset:
    return Dataset.from_dict({"label": list(labels), "x": list(range(len(labels)))})


def test_is_a_flwr_partitioner_and_returns_rows_with_all_columns():
    p = GammaSimilarityPartitioner(num_partitions=4, partition_by="label", gamma=0.0)
    assert isinstance(p, Partitioner) and p.num_partitions == 4
    p.dataset = _ds([3, 3, 2, 2, 1, 1, 0, 0])
    part = p.load_partition(1)
    assert sorted(part["label"]) == [1, 1] and sorted(part["x"]) == [4, 5]


def test_gamma_zero_is_sorted_contiguous_shards():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2])
    parts = gamma_similarity_indices(labels, 3, 0.0, np.random.default_rng(0), shuffle=False)
    # sorted by (label, index): 0s at rows 1, 3, 6; 1s at 2, 5, 7; 2s at 0, 4, 8
    assert [p.tolist() for p in parts] == [[1, 3, 6], [2, 5, 7], [0, 4, 8]]


def test_gamma_half_hand_sizes():
    labels = np.repeat(np.arange(4), 10)  # 40 rows, 4 classes
    parts = gamma_similarity_indices(labels, 4, 0.5, np.random.default_rng(1), shuffle=False)
    assert [len(p) for p in parts] == [10, 10, 10, 10]
    shards = [p[5:] for p in parts]  # without shuffling: the IID piece first, then the shard
    for prev, cur in zip(shards[:-1], shards[1:], strict=True):
        # consecutive pieces of the label-sorted remainder: labels never go down from one to the next
        assert labels[prev].max() <= labels[cur].min()
    assert all(len(set(labels[s].tolist())) <= 2 for s in shards)
    allidx = np.sort(np.concatenate(parts))
    assert np.array_equal(allidx, np.arange(40))


def test_gamma_one_is_iid_balanced():
    labels = np.repeat(np.arange(10), 100)
    parts = gamma_similarity_indices(labels, 5, 1.0, np.random.default_rng(0))
    counts = np.stack([np.bincount(labels[p], minlength=10) for p in parts])
    assert counts.sum() == 1000 and (counts.sum(1) == 200).all()
    assert counts.min() > 5  # every class on every partition (sorted shards would give 0s)


def test_similarity_fraction_controls_skew():
    labels = np.repeat(np.arange(10), 100)

    def max_class_share(gamma):
        parts = gamma_similarity_indices(labels, 10, gamma, np.random.default_rng(0))
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

    shares = [max_class_share(g) for g in (1.0, 0.5, 0.0)]
    assert shares[0] < shares[1] < shares[2] == 1.0


def test_seed_stability():
    labels = np.repeat(np.arange(5), 20)
    a = GammaSimilarityPartitioner(5, "label", gamma=0.4, seed=3)
    b = GammaSimilarityPartitioner(5, "label", gamma=0.4, seed=3)
    a.dataset, b.dataset = _ds(labels), _ds(labels)
    assert all(a.load_partition(i)["x"] == b.load_partition(i)["x"] for i in range(5))


def test_errors():
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        GammaSimilarityPartitioner(3, "label", gamma=-0.1)
    with pytest.raises(ValueError, match="num_partitions must be >= 1"):
        GammaSimilarityPartitioner(0, "label", gamma=0.5)
    p = GammaSimilarityPartitioner(5, "label", gamma=0.5)
    p.dataset = _ds([0, 1, 2])
    with pytest.raises(ValueError, match=r"num_partitions must be <= the number of rows \(3\)"):
        p.load_partition(0)
    q = GammaSimilarityPartitioner(2, "label", gamma=0.5)
    q.dataset = _ds([0, 1, 2])
    with pytest.raises(ValueError, match="partition_id must be <= 1"):
        q.load_partition(2)
