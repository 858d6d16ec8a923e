"""Gamma-similarity partitioning (the split ByzFL calls ``gamma_similarity_niid``), as a flwr-datasets
:class:`~flwr_datasets.partitioner.Partitioner`.

With ``N`` samples, ``K`` partitions and ``gamma`` in ``[0, 1]``:

1. shuffle the sample indices (seeded) and take the first ``floor(gamma * N)`` of them: this *similar*
   part is cut into ``K`` near-equal random pieces (IID);
2. sort the other ``N - floor(gamma * N)`` indices by label (ties by index) and cut them into ``K``
   contiguous near-equal shards (``numpy.array_split``): the *extreme non-IID* part;
3. partition ``k`` is IID piece ``k`` plus shard ``k`` (shuffled together if ``shuffle``).

``gamma = 1`` is a plain IID split; ``gamma = 0`` is ByzFL's ``extreme_niid`` (each partition holds one
or two labels when ``K`` is a multiple of the number of classes). Every partition gets ``N // K`` or
``N // K + 1`` samples of each part.

Difference from ByzFL 0.0.11: ByzFL takes the IID part as the *first* ``gamma * N`` indices in data set
order and only then shuffles it; here the indices are shuffled first, so the IID part is a random sample
whatever the file order (the two coincide in distribution for shuffled files such as MNIST).
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner

from ..aggregators.base import check_float, check_int

__all__ = ["GammaSimilarityPartitioner", "gamma_similarity_indices"]


def gamma_similarity_indices(
    labels: np.ndarray, num_partitions: int, gamma: float, rng: np.random.Generator, shuffle: bool = True
) -> list[np.ndarray]:
    """Index arrays of the ``num_partitions`` gamma-similarity partitions of ``labels`` (module docstring)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    order = rng.permutation(n)
    n_iid = int(np.floor(gamma * n))
    iid = np.array_split(order[:n_iid], num_partitions)
    rest = order[n_iid:]
    rest = rest[np.lexsort((rest, labels[rest]))]  # by label, then by index: deterministic
    shards = np.array_split(rest, num_partitions)
    parts = []
    for a, b in zip(iid, shards, strict=True):
        part = np.concatenate((a, b)).astype(np.int64)
        if shuffle:
            rng.shuffle(part)
        parts.append(part)
    return parts


class GammaSimilarityPartitioner(Partitioner):
    """Split a data set so that a fraction ``gamma`` is IID and the rest is sorted by label in shards.

    Parameters
    ----------
    num_partitions
        Number of partitions ``K`` (at most the number of rows).
    partition_by
        Label column.
    gamma
        Fraction of the data spread IID, in ``[0, 1]`` (1: IID; 0: extreme non-IID).
    shuffle
        Shuffle the samples inside each partition.
    seed
        Seeds the split and the shuffles: same seed, same partitions.

    Examples
    --------
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"label": [0, 0, 1, 1, 2, 2, 3, 3]})
    >>> p = GammaSimilarityPartitioner(num_partitions=4, partition_by="label", gamma=0.0)
    >>> p.dataset = ds
    >>> sorted(p.load_partition(1)["label"])
    [1, 1]
    """

    def __init__(
        self,
        num_partitions: int,
        partition_by: str,
        gamma: float,
        shuffle: bool = True,
        seed: int | None = 42,
    ) -> None:
        super().__init__()
        self._num_partitions = check_int("num_partitions", num_partitions, low=1)
        self._partition_by = partition_by
        self._gamma = check_float("gamma", gamma, low=0.0, high=1.0)
        self._shuffle = shuffle
        self._seed = seed
        self._partition_id_to_indices: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        """Total number of partitions."""
        return self._num_partitions

    @property
    def partition_id_to_indices(self) -> list[np.ndarray]:
        """Row indices of every partition (computed once, on first use)."""
        if self._partition_id_to_indices is None:
            dataset: Dataset = self.dataset
            if self._num_partitions > dataset.num_rows:
                raise ValueError(
                    f"num_partitions must be <= the number of rows ({dataset.num_rows}), "
                    f"got {self._num_partitions}"
                )
            labels = np.asarray(dataset.with_format("arrow")[self._partition_by])
            rng = np.random.default_rng(self._seed)
            self._partition_id_to_indices = gamma_similarity_indices(
                labels, self._num_partitions, self._gamma, rng, self._shuffle
            )
        return self._partition_id_to_indices

    def load_partition(self, partition_id: int) -> Dataset:
        """The rows of partition ``partition_id`` as a :class:`datasets.Dataset`."""
        partition_id = check_int("partition_id", partition_id, low=0, high=self._num_partitions - 1)
        return self.dataset.select(self.partition_id_to_indices[partition_id])
