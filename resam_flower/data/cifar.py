"""CIFAR-10 from the Hugging Face hub (``uoft-cs/cifar10``, as flwr-datasets uses it) or a local folder.

Sources, first match wins:

1. ``data_dir=`` or ``$RESAM_CIFAR10_DIR``: torchvision's ``cifar-10-batches-py`` folder (or its
   parent), the python version of CIFAR-10, read here with a numpy-only unpickler. Each batch file is
   size-checked before it is read (at most :data:`MAX_BATCH_BYTES`) and its MD5 compared with the
   official one (torchvision's list) before it is unpickled; other files are refused unless
   ``$RESAM_CIFAR10_UNVERIFIED=1`` (a CIFAR-10 of your own making: still size-checked, unpickled with
   bounds, and checked for uint8 rows of 3072 pixels and labels in 0..9);
2. the hub data set ``uoft-cs/cifar10`` through :func:`datasets.load_dataset` (Hugging Face keeps its
   own download cache; this needs network access once).

Either way the images are decoded once into a uint8 ``.npz`` in the project cache
(:func:`~resam_flower.data.cache.cache_dir`), so every later process (each Ray worker) loads bytes
instead of decoding 60,000 PNGs. :func:`hf_to_arrays` is the conversion applied to the hub data set;
it works on any :class:`datasets.Dataset` with an image column and a label column.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from .base import DataSourceError
from .cache import cache_dir, file_lock, load_arrays, save_arrays
from .safe_pickle import loads_arrays, read_bounded

__all__ = [
    "CIFAR10_DIR_ENV",
    "CIFAR10_MD5",
    "CIFAR10_UNVERIFIED_ENV",
    "HF_CIFAR10",
    "MAX_BATCH_BYTES",
    "hf_to_arrays",
    "load_cifar10_arrays",
]

#: Environment variable naming a folder with torchvision's ``cifar-10-batches-py``.
CIFAR10_DIR_ENV = "RESAM_CIFAR10_DIR"
#: Set to ``1`` to read batch files whose MD5 is not the official one.
CIFAR10_UNVERIFIED_ENV = "RESAM_CIFAR10_UNVERIFIED"
#: MD5 of the official ``cifar-10-batches-py`` files (as torchvision's ``CIFAR10`` checks them).
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
#: Largest batch file read: an official one (10,000 images of 3,072 bytes, labels, names) is ~31 MB.
MAX_BATCH_BYTES = 32 * 2**20
_BATCH_ROWS = 10_000
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


def _read_batch(path: Path, name: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: size, then MD5 (``verify``), then a bounded unpickling, then its structure."""
    try:
        raw = read_bounded(path, MAX_BATCH_BYTES)
    except ValueError as exc:
        raise DataSourceError(f"{exc}: not a CIFAR-10 python batch") from exc
    md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if verify and md5 != CIFAR10_MD5[name]:
        raise DataSourceError(
            f"{path} has MD5 {md5}, not the official {CIFAR10_MD5[name]}: not torchvision's CIFAR-10 batch; "
            f"set {CIFAR10_UNVERIFIED_ENV}=1 to read a CIFAR-10 of your own making"
        )
    try:
        entry = loads_arrays(raw)
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as exc:
        raise DataSourceError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    data = entry.get("data") if isinstance(entry, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataSourceError(
            f"{path} is not a CIFAR-10 python batch: 'data' must be uint8 rows of 3072 pixels"
        )
    if data.shape[0] > _BATCH_ROWS:
        raise DataSourceError(f"{path}: {data.shape[0]} images, a CIFAR-10 batch has at most {_BATCH_ROWS}")
    try:
        y = np.asarray(entry["labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise DataSourceError(f"{path} is not a CIFAR-10 python batch: bad 'labels' ({exc})") from exc
    if y.shape != (data.shape[0],):
        raise DataSourceError(f"{path}: {data.shape[0]} images but labels of shape {y.shape}")
    if y.size and not (0 <= y.min() and y.max() < 10):
        raise DataSourceError(f"{path}: labels must be in 0..9, got {y.min()}..{y.max()}")
    return data.reshape(-1, 3, 32, 32), y


def _from_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the python version of CIFAR-10 (``cifar-10-batches-py``, as torchvision downloads it).

    ``folder`` is that folder or its parent. Each batch is a pickled dict with ``data`` (uint8
    ``(n, 3072)``, channel-first rows) and ``labels``; it is read only if it is at most
    :data:`MAX_BATCH_BYTES` long and (unless ``$RESAM_CIFAR10_UNVERIFIED=1``) has the official MD5, and
    unpickled with numpy arrays allowed, nothing else, allocations bounded by its size (:mod:`.safe_pickle`).
    """
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    verify = os.environ.get(CIFAR10_UNVERIFIED_ENV, "") != "1"
    images, labels = [], []
    for name in _BATCHES[split]:
        path = folder / name
        if not path.is_file():
            raise DataSourceError(
                f"no CIFAR-10 batch {name} in {folder}; {CIFAR10_DIR_ENV} (or data_dir=) must name a folder "
                f"holding cifar-10-batches-py (the 'CIFAR-10 python version' archive, unpacked)"
            )
        data, y = _read_batch(path, name, verify)
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
