"""Unpickling restricted to numpy arrays, for the data sets that ship as pickles (MNIST, CIFAR-10).

A pickle can run any code it names. The files read here hold only numpy arrays, lists, dicts, strings
and numbers, so the unpickler resolves just the few globals numpy arrays need and refuses every other
one with :class:`pickle.UnpicklingError`.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

__all__ = ["loads_arrays"]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes into protocol-2 pickles
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if module.startswith("numpy.core"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                return getattr(importlib.import_module("numpy._core" + module[10:]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def loads_arrays(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 pickles read with ``encoding="latin1"``), numpy arrays only."""
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
