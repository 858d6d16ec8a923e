"""On-disk cache of prepared data sets, safe to share between processes.

Every virtual client of a Flower simulation is a Ray worker process of its own, and several of them
may ask for the same data set at the same moment. Two mechanisms keep the cache consistent:

* **an exclusive file lock** (:func:`file_lock`, ``fcntl.flock`` on POSIX) serialises the slow
  preparation (download, decompression, conversion): the first process prepares, the others wait and
  then find the finished file;
* **atomic publication** (:func:`atomic_write_bytes`, :func:`save_arrays`): a file is written under a
  temporary name in the same folder and renamed into place with :func:`os.replace`, so a reader sees
  either no file or a complete one, never a torn write (this alone is enough where ``fcntl`` is
  missing, e.g. on Windows: work may then be duplicated, never corrupted).

The cache folder is ``$RESAM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/resam-flower``, else
``~/.cache/resam-flower``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._files import atomic_open

__all__ = [
    "CACHE_ENV",
    "cache_dir",
    "file_lock",
    "atomic_write_bytes",
    "save_arrays",
    "load_arrays",
    "sha256_of",
]

#: Environment variable that overrides the cache folder.
CACHE_ENV = "RESAM_CACHE_DIR"


def cache_dir(sub: str | None = None, *, create: bool = True) -> Path:
    """The cache folder (or its sub-folder ``sub``), created on demand."""
    root = os.environ.get(CACHE_ENV)
    if root:
        path = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "resam-flower"
    if sub:
        path = path / sub
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` (a lock file, created if missing).

    Blocks until the lock is free. On platforms without :mod:`fcntl` it is a no-op (atomic renames
    still keep the cache consistent).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + :func:`os.replace`)."""
    path = Path(path)
    with atomic_open(path, mode=0o644) as fh:  # cached data are not secret (mkstemp alone makes 0600)
        fh.write(data)
    return path


def save_arrays(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """Save named arrays to an uncompressed ``.npz`` file atomically (no pickled objects)."""
    path = Path(path)
    with atomic_open(path, mode=0o644) as handle:
        np.savez(handle, **arrays)
    return path


def load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load what :func:`save_arrays` wrote (``allow_pickle=False``: data only, never code)."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def sha256_of(data: bytes | str | os.PathLike[str]) -> str:
    """Hex SHA-256 of ``data`` (bytes) or of the file at ``data`` (a path)."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with open(data, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
