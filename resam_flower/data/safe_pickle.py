"""Unpickling restricted to numpy arrays, for the data sets that ship as pickles (MNIST, CIFAR-10).

A pickle can run any code it names. The files read here hold only numpy arrays, lists, dicts, strings
and numbers, so the unpickler resolves just the few globals numpy arrays need and refuses every other
one with :class:`pickle.UnpicklingError`.

A pickle of a few bytes can also ask for gigabytes without naming anything dangerous: a memo index of
``2**32`` makes the unpickler grow its memo table to it, and ``numpy``'s ``_reconstruct`` allocates the
shape it is given. So, before anything is built, :func:`loads_arrays` walks the opcodes
(:func:`pickletools.genops`, which builds nothing) and refuses memo indices beyond the number of opcodes
and frames longer than the data; while building, ``_reconstruct`` may allocate at most as many bytes as the
pickle holds, and dtypes holding Python objects are refused. What a pickle that passes can build is then
of the order of its own size. :func:`read_bounded` reads a file only if it is no larger than a bound.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import pickletools
from typing import Any

import numpy as np

__all__ = ["loads_arrays", "read_bounded"]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes into protocol-2 pickles
}
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of ``path``; ``ValueError`` naming both sizes if it holds more than ``max_bytes``.

    The size is checked before reading, and the read stops one byte past the bound (a file that grows in
    between is refused too).
    """
    size = os.stat(path).st_size
    if size > max_bytes:
        raise ValueError(f"{path} has {size} bytes, more than the {max_bytes} allowed")
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path} grew past the {max_bytes} bytes allowed while it was read")
    return data


def _check_opcodes(data: bytes) -> None:
    """Refuse memo indices beyond the opcode count and frames beyond the data, before building anything."""
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(data)):
            if op.name in _MEMO_OPS and not 0 <= int(arg) <= count:
                raise pickle.UnpicklingError(f"memo index {arg} at opcode {count} of a data pickle")
            if op.name == "FRAME" and int(arg) > len(data):
                raise pickle.UnpicklingError(f"frame of {arg} bytes in a data pickle of {len(data)} bytes")
    except (ValueError, EOFError) as exc:  # truncated or malformed opcode stream
        raise pickle.UnpicklingError(f"malformed data pickle: {exc}") from exc


def _plain_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing dtype {dtype} (Python objects) in a data pickle")
    return dtype


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers and refuses every other global."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.max_bytes = len(data)

    def _reconstruct(self, original: Any) -> Any:
        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
            try:
                size = int(np.prod(shape, dtype=np.uint64)) * np.dtype(dtype).itemsize
            except (TypeError, ValueError, OverflowError) as exc:
                raise pickle.UnpicklingError(f"bad array shape {shape!r} in a data pickle") from exc
            if size > self.max_bytes:
                raise pickle.UnpicklingError(
                    f"an array of shape {shape!r} ({size} bytes) from a data pickle of {self.max_bytes} bytes"
                )
            return original(subtype, shape, dtype)

        return reconstruct

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if module == "numpy" and name == "dtype":
            return _plain_dtype
        found = None
        if module.startswith("numpy.core"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                found = getattr(importlib.import_module("numpy._core" + module[10:]), name)
            except ImportError:
                pass
        found = found if found is not None else super().find_class(module, name)
        return self._reconstruct(found) if name == "_reconstruct" else found


def loads_arrays(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 pickles read with ``encoding="latin1"``), numpy arrays only, bounded."""
    _check_opcodes(data)
    return _ArrayUnpickler(data).load()
