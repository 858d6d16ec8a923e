"""Data sets and their partitioning among clients (no Flower objects here: tensors in, tensors out).

>>> from resam_flower.data import load_dataset, load_partition, partition
>>> train = load_dataset("digits", "train")            # DataSplit: images (N, 1, 8, 8), labels (N,)
>>> parts = partition(train, 5, "dirichlet", alpha=0.5, seed=0)   # 5 index tensors
>>> client = load_partition("digits", 2, 5, "iid", seed=0)        # DataSplit of client 2

Sources: :mod:`.sources` (``mnist``, ``fashion-mnist``, ``digits``, ``synthetic``, ``synthetic-cifar``,
``cifar10``); partitioners: :mod:`.partition` (flwr-datasets' IID, Dirichlet, pathological, plus
:class:`GammaSimilarityPartitioner`); on-disk cache: :mod:`.cache` (``$RESAM_CACHE_DIR``).
"""

from .base import NORMALISATION, DataSourceError, DataSplit
from .cache import CACHE_ENV, cache_dir
from .partition import (
    PARTITIONERS,
    build_partitioner,
    label_histogram,
    load_partition,
    partition,
    partition_indices,
)
from .sources import available_datasets, load_dataset

__all__ = [
    "DataSplit",
    "DataSourceError",
    "NORMALISATION",
    "CACHE_ENV",
    "cache_dir",
    "load_dataset",
    "available_datasets",
    "partition",
    "load_partition",
    "partition_indices",
    "build_partitioner",
    "label_histogram",
    "PARTITIONERS",
    "GammaSimilarityPartitioner",
]


def __getattr__(name: str):
    # GammaSimilarityPartitioner subclasses a flwr-datasets class: imported on first use only, so that
    # ``import resam_flower.data`` (every client process) does not pay for datasets/flwr_datasets.
    if name == "GammaSimilarityPartitioner":
        from .gamma_similarity import GammaSimilarityPartitioner

        return GammaSimilarityPartitioner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
