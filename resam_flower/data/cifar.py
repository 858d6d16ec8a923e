"""CIFAR-10 from the Hugging Face hub (``uoft-cs/cifar10``, as flwr-datasets uses it) or a local folder.

Sources, first match wins:

1. ``data_dir=`` or ``$RESAM_CIFAR10_DIR``: torchvision's ``cifar-10-batches-py`` folder (or its
   parent), the python version of CIFAR-10, read here with a numpy-only unpickler;
2. the hub data set ``uoft-cs/cifar10`` through :func:`datasets.load_dataset` (Hugging Face keeps its
   own download cache; this needs network access once).

Either way the images are decoded once into a uint8 ``.npz`` in the project cache
(:func:`~resam_flower.data.cache.cache_dir`), so every later process (each Ray worker) loads bytes
instead of decoding 60,000 PNGs. :func:`hf_to_arrays` is the conversion applied to the hub data set;
it works on any :class:`datasets.Dataset` with an image column and a label column.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .base import DataSourceError
from .cache import cache_dir, file_lock, load_arrays, save_arrays
from .safe_pickle import loads_arrays

__all__ = ["CIFAR10_DIR_ENV", "HF_CIFAR10", "hf_to_arrays", "load_cifar10_arrays"]

#: Environment variable naming a folder with torchvision's ``cifar-10-batches-py``.
CIFAR10_DIR_ENV = "RESAM_CIFAR10_DIR"
#: Hugging Face hub name of CIFAR-10 (columns ``img``: Image, ``label``: ClassLabel(10)).
HF_CIFAR10 = "uoft-cs/cifar10"


def hf_to_arrays(
    dataset, image_column: str = "img", label_column: str = "label", batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a Hugging Face image data set into uint8 ``(N, C, H, W)`` pixels and int64 ``(N,)`` labels.

    Gray images (``(H, W)``) get a channel axis; colour images ``(H, W, C)`` are moved to channel-first.
    """
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"data set has no column {column!r}; columns: {dataset.column_names}")
    images, labels = [], []
    view = dataset.select_columns([image_column, label_column]).with_format("numpy")
    for batch in view.iter(batch_size=batch_size):
        x = np.asarray(batch[image_column])
        if x.dtype == object:  # images of unequal sizes cannot be stacked
            raise ValueError("images of different shapes in the data set; resize them first")
        x = x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)
        images.append(np.ascontiguousarray(x, dtype=np.uint8))
        labels.append(np.asarray(batch[label_column], dtype=np.int64))
    if not images:
        raise ValueError("empty data set")
    return np.concatenate(images), np.concatenate(labels)


_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _from_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the python version of CIFAR-10 (``cifar-10-batches-py``, as torchvision downloads it).

    ``folder`` is that folder or its parent. Each batch is a pickled dict with ``data`` (uint8
    ``(n, 3072)``, channel-first rows) and ``labels``; it is unpickled with numpy arrays allowed and
    nothing else (:mod:`.safe_pickle`).
    """
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    images, labels = [], []
    for name in _BATCHES[split]:
        path = folder / name
        if not path.is_file():
            raise DataSourceError(
                f"no CIFAR-10 batch {name} in {folder}; {CIFAR10_DIR_ENV} (or data_dir=) must name a folder "
                f"holding cifar-10-batches-py (the 'CIFAR-10 python version' archive, unpacked)"
            )
        try:
            entry = loads_arrays(path.read_bytes())
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise DataSourceError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
        if y.shape != (data.shape[0],):
            raise DataSourceError(f"{path}: {data.shape[0]} images but {y.shape[0]} labels")
        images.append(data)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _from_hub(split: str, hf_name: str) -> tuple[np.ndarray, np.ndarray]:
    import datasets

    try:
        ds = datasets.load_dataset(hf_name, split=split)
    except Exception as exc:  # network, missing data set, auth: all mean "not available here"
        raise DataSourceError(
            f"cannot load {hf_name!r} ({split}) from the Hugging Face hub (no network access?): "
            f"{type(exc).__name__}: {exc}; fix: set {CIFAR10_DIR_ENV} (or data_dir=) to a folder holding "
            f"cifar-10-batches-py (as torchvision downloads it), or run once where the hub is reachable"
        ) from exc
    return hf_to_arrays(ds)


def load_cifar10_arrays(
    split: str, data_dir: str | os.PathLike[str] | None = None, hf_name: str = HF_CIFAR10
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` as uint8 ``(N, 3, 32, 32)`` and int64 labels, cached after the first load."""
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    data_dir = data_dir or os.environ.get(CIFAR10_DIR_ENV) or None
    if data_dir:  # pickled batches on disk are fast to read: no second cache
        return _from_folder(Path(data_dir), split)
    root = cache_dir("cifar10")
    target = root / f"{hf_name.replace('/', '--')}-{split}.npz"
    if not target.exists():
        with file_lock(root / ".lock"):
            if not target.exists():
                images, labels = _from_hub(split, hf_name)
                save_arrays(target, images=images, labels=labels)
    arrays = load_arrays(target)
    return arrays["images"], arrays["labels"]
