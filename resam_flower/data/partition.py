"""Split a data set among clients with flwr-datasets partitioners.

``partition(labels, num_partitions, "dirichlet", alpha=0.5, seed=0)`` returns one int64 index tensor
per partition (indices into the data set); ``load_partition("mnist", i, n, "iid", seed=0)`` returns the
:class:`~resam_flower.data.base.DataSplit` of client ``i``, computing the split once per process.

The partitioners are flwr-datasets' own, applied to a :class:`datasets.Dataset` built from the labels
(plus a row-index column, so that no image is copied into Arrow):

==================  =============================================================================
``iid``             :class:`~flwr_datasets.partitioner.IidPartitioner` on the data set shuffled with
                    ``seed`` (as ``FederatedDataset(shuffle=True)`` does): near-equal random parts
``dirichlet``       :class:`~flwr_datasets.partitioner.DirichletPartitioner`: for every class, the
                    fractions given to the ``K`` partitions are drawn from ``Dir(alpha * 1_K)``
                    (smaller ``alpha``, more skew); ``min_partition_size`` (10), ``self_balancing``
``pathological``    :class:`~flwr_datasets.partitioner.PathologicalPartitioner`: each partition holds
                    exactly ``classes_per_partition`` classes (``class_assignment``:
                    ``"first-deterministic"`` by default, so that every class is used when
                    ``K >= num_classes``; also ``"random"``, ``"deterministic"``)
``gamma-similarity`` :class:`~resam_flower.data.gamma_similarity.GammaSimilarityPartitioner`: a
                    fraction ``gamma`` IID, the rest sorted by label in contiguous shards (ByzFL)
==================  =============================================================================

The same arguments give the same partitions in every process: the split depends on ``seed`` only.
:func:`load_partition` also keeps the row indices of a split in the on-disk cache
(``<cache>/partitions``, keyed by the data set's labels and every argument), so the many processes of a
simulation or the SuperNodes of one machine compute a split once; a process that reads a cached split
never imports ``datasets``/``flwr_datasets`` (about 2 s of start-up per process).
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._registry import Registry
from ..aggregators.base import check_float, check_int
from .base import DataSplit
from .cache import cache_dir, load_arrays, save_arrays, sha256_of
from .sources import _canonical, _freeze, load_dataset

if TYPE_CHECKING:  # imported lazily at run time: ``datasets`` and ``flwr_datasets`` take ~2 s to import
    from datasets import Dataset
    from flwr_datasets.partitioner import Partitioner

__all__ = [
    "PARTITIONERS",
    "build_partitioner",
    "partition",
    "partition_indices",
    "load_partition",
    "label_histogram",
]

PARTITIONERS = ("iid", "dirichlet", "pathological", "gamma-similarity")
_ALIASES = {"gamma": "gamma-similarity", "gamma-similarity-niid": "gamma-similarity", "shard": "pathological"}
_LABEL, _ROW = "label", "row"


_REGISTRY: Registry[str] = Registry("partitioner", {name: name for name in PARTITIONERS}, _ALIASES)


def _canonical_partitioner(name: str) -> str:
    return _REGISTRY.resolve(name)  # an unknown name raises, listing the available ones


def build_partitioner(
    name: str,
    num_partitions: int,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    gamma: float = 0.5,
    min_partition_size: int = 10,
    self_balancing: bool = False,
    class_assignment: str = "first-deterministic",
    partition_by: str = _LABEL,
) -> Partitioner:
    """A flwr-datasets partitioner by name (parameters not used by that partitioner are ignored).

    For ``"iid"`` the caller must shuffle the data set first (``IidPartitioner`` cuts contiguous
    shards); :func:`partition` does.
    """
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    from .gamma_similarity import GammaSimilarityPartitioner

    key = _canonical_partitioner(name)
    num_partitions = check_int("num_partitions", num_partitions, low=1)
    seed = check_int("seed", seed, low=0)
    if key == "iid":
        return IidPartitioner(num_partitions)
    if key == "dirichlet":
        return DirichletPartitioner(
            num_partitions,
            partition_by,
            alpha=check_float("alpha", alpha, low=0.0, low_open=True),
            min_partition_size=check_int("min_partition_size", min_partition_size, low=0),
            self_balancing=bool(self_balancing),
            shuffle=True,
            seed=seed,
        )
    if key == "pathological":
        if class_assignment not in ("random", "deterministic", "first-deterministic"):
            raise ValueError(
                "class_assignment must be 'random', 'deterministic' or 'first-deterministic', "
                f"got {class_assignment!r}"
            )
        return PathologicalPartitioner(
            num_partitions,
            partition_by,
            num_classes_per_partition=check_int("classes_per_partition", classes_per_partition, low=1),
            class_assignment_mode=class_assignment,  # type: ignore[arg-type]
            shuffle=True,
            seed=seed,
        )
    return GammaSimilarityPartitioner(num_partitions, partition_by, gamma=gamma, shuffle=True, seed=seed)


def _labels_array(data: DataSplit | torch.Tensor | np.ndarray | Dataset, partition_by: str) -> np.ndarray:
    if isinstance(data, DataSplit):
        data = data.labels
    datasets = sys.modules.get("datasets")  # a Dataset can only exist if its module was imported
    if datasets is not None and isinstance(data, datasets.Dataset):
        return np.asarray(data.with_format("arrow")[partition_by])
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    labels = np.asarray(data)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    return labels


def partition(
    data: DataSplit | torch.Tensor | np.ndarray | Dataset,
    num_partitions: int,
    partitioner: str = "iid",
    *,
    seed: int = 0,
    partition_by: str = _LABEL,
    **params: Any,
) -> list[torch.Tensor]:
    """Split ``data`` into ``num_partitions`` parts; return each part's row indices (int64 tensors).

    Parameters
    ----------
    data
        A :class:`DataSplit`, its labels (tensor or array), or a :class:`datasets.Dataset` with a
        ``partition_by`` column.
    num_partitions
        Number of parts ``K`` (``1 <= K <=`` number of rows).
    partitioner
        ``"iid"``, ``"dirichlet"`` (``alpha``), ``"pathological"`` (``classes_per_partition``) or
        ``"gamma-similarity"`` (``gamma``); see the module docstring.
    seed
        Seeds the split: the same arguments give the same indices.
    **params
        Partitioner parameters (:func:`build_partitioner`); kebab-case keys are accepted.
    """
    labels = _labels_array(data, partition_by)
    num_partitions = check_int("num_partitions", num_partitions, low=1, high=max(1, labels.shape[0]))
    params = {k.replace("-", "_"): v for k, v in params.items()}
    key = _canonical_partitioner(partitioner)
    p = build_partitioner(key, num_partitions, seed=seed, **params)
    from datasets import Dataset

    ds = Dataset.from_dict({_LABEL: labels, _ROW: np.arange(labels.shape[0], dtype=np.int64)})
    if key == "iid":
        ds = ds.shuffle(seed=seed)
    # Arrow format: a column read is one pyarrow array, not a per-row Python loop (60k rows: 0.1 ms
    # instead of seconds in flwr-datasets' `np.array(dataset[label])`).
    p.dataset = ds.with_format("arrow")
    return [torch.from_numpy(rows) for rows in _partition_rows(p, num_partitions, fast=key != "iid")]


def _partition_rows(p: Partitioner, num_partitions: int, fast: bool = True) -> list[np.ndarray]:
    """Original row numbers of every part of ``p`` (whose data set is the label/row table).

    The public way is ``p.load_partition(i)[row]``. flwr-datasets' Dirichlet and pathological
    partitioners keep the positions in ``_partition_id_to_indices`` once ``num_partitions`` was read;
    where that table exists (and the data set is unshuffled, so positions are rows) it is read directly:
    ``load_partition`` hashes every index of a list of numpy scalars (2.4 s for MNIST's pathological
    split, against milliseconds). Any other shape of internals falls back to the public way.
    """
    from .gamma_similarity import GammaSimilarityPartitioner

    if fast and isinstance(p, GammaSimilarityPartitioner):
        return [np.asarray(rows, dtype=np.int64) for rows in p.partition_id_to_indices]
    _ = p.num_partitions  # public property: runs the lazy split
    table = getattr(p, "_partition_id_to_indices", None) if fast else None
    if isinstance(table, dict) and sorted(table) == list(range(num_partitions)):
        return [np.asarray(table[i], dtype=np.int64) for i in range(num_partitions)]
    return [np.asarray(p.load_partition(i)[_ROW], dtype=np.int64) for i in range(num_partitions)]


@functools.lru_cache(maxsize=8)
def _partition_cached(
    name: str,
    split: str,
    normalize: bool,
    options: tuple,
    num_partitions: int,
    key: str,
    params: tuple,
    seed: int,
) -> tuple[torch.Tensor, ...]:
    data = load_dataset(name, split, normalize=normalize, **dict(options))
    labels = data.labels.detach().cpu().numpy().astype(np.int64, copy=False)
    ident = repr((name, split, options, num_partitions, key, params, seed, sha256_of(labels.tobytes())))
    path = cache_dir("partitions") / f"{sha256_of(ident.encode())[:32]}.npz"
    rows = _read_cached_rows(path, num_partitions, labels.shape[0])
    if rows is None:
        rows = [p.numpy() for p in partition(labels, num_partitions, key, seed=seed, **dict(params))]
        try:
            save_arrays(path, **{f"p{i}": r for i, r in enumerate(rows)})
        except OSError:  # a read-only cache costs the recomputation, nothing else
            pass
    return tuple(torch.from_numpy(np.ascontiguousarray(r, dtype=np.int64)) for r in rows)


def _read_cached_rows(path, num_partitions: int, num_rows: int) -> list[np.ndarray] | None:
    """The cached split at ``path`` if it is complete and plausible, else ``None`` (recompute)."""
    if not path.exists():
        return None
    try:
        arrays = load_arrays(path)
        rows = [arrays[f"p{i}"] for i in range(num_partitions)]
    except (OSError, ValueError, KeyError):
        return None
    ok = len(arrays) == num_partitions and all(
        r.ndim == 1 and r.dtype == np.int64 and (r.size == 0 or (r.min() >= 0 and r.max() < num_rows))
        for r in rows
    )
    return rows if ok else None


def _split_key(name, num_partitions, partitioner, seed, split, normalize, dataset_options, params) -> tuple:
    num_partitions = check_int("num_partitions", num_partitions, low=1)
    options = tuple(sorted((k.replace("-", "_"), _freeze(v)) for k, v in (dataset_options or {}).items()))
    frozen = tuple(sorted((k.replace("-", "_"), _freeze(v)) for k, v in params.items()))
    key = _canonical_partitioner(partitioner)
    return (_canonical(name), split, bool(normalize), options, num_partitions, key, frozen, int(seed))


def partition_indices(
    name: str,
    num_partitions: int,
    partitioner: str = "iid",
    *,
    seed: int = 0,
    split: str = "train",
    normalize: bool = True,
    dataset_options: dict[str, Any] | None = None,
    **params: Any,
) -> tuple[torch.Tensor, ...]:
    """Row indices of every part of the split :func:`load_partition` uses (same arguments).

    Computed once per process and kept in the on-disk cache: calling it in a simulation's driver before
    the engine starts lets every client process read the split instead of computing it.
    """
    args = _split_key(name, num_partitions, partitioner, seed, split, normalize, dataset_options, params)
    return _partition_cached(*args)


def load_partition(
    name: str,
    partition_id: int,
    num_partitions: int,
    partitioner: str = "iid",
    *,
    seed: int = 0,
    split: str = "train",
    normalize: bool = True,
    dataset_options: dict[str, Any] | None = None,
    **params: Any,
) -> DataSplit:
    """Client ``partition_id``'s share of ``split`` of data set ``name``.

    The data set is loaded and split once per process (both are cached), so the many virtual clients
    a Ray worker serves in turn cost one load and one split. ``dataset_options`` go to
    :func:`~resam_flower.data.load_dataset`, ``params`` to :func:`partition`.
    """
    args = _split_key(name, num_partitions, partitioner, seed, split, normalize, dataset_options, params)
    num_partitions = args[4]
    partition_id = check_int("partition_id", partition_id, low=0, high=num_partitions - 1)
    splits = _splits_cached(*args)
    if splits[partition_id] is None:
        parts = _partition_cached(*args)
        data = load_dataset(args[0], split, normalize=normalize, **dict(args[3]))
        splits[partition_id] = data.subset(
            parts[partition_id], name=f"{data.name}[{partition_id}/{num_partitions}]"
        )
    return splits[partition_id]


@functools.lru_cache(maxsize=2)
def _splits_cached(*key: Any) -> list[DataSplit | None]:
    # The partitions' copied rows, filled as clients ask for them: a worker serving every virtual client of
    # a partitioning holds one copy of the data set, and the copy is made once, not on every message.
    return [None] * key[4]


def label_histogram(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Counts of each class in each part: int64 ``(len(parts), num_classes)``."""
    return torch.stack([torch.bincount(labels[p], minlength=num_classes) for p in parts])
