"""Atomic file writes: a temporary file beside the target, renamed over it only once it is complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open"]


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    *,
    text: bool = False,
    mode: int | None = None,
    fsync: bool = False,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Yield a file to write ``path``'s new content into; on a clean exit it replaces ``path`` atomically.

    The content goes to a temporary file in the same folder (so :func:`os.replace` is a rename on one file
    system); a crash at any moment leaves the old file or the new one, never a torn one, and an error removes
    the temporary file. ``mode`` sets the permissions on the open descriptor (``fchmod``: the umask cannot
    change them, and the old file's permissions are not inherited); ``fsync`` flushes the data to disk before
    the rename (files a restart must find intact: checkpoints, momentum, credentials).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w" if text else "wb", newline=newline if text else None) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
