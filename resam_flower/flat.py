"""The one flatten/unflatten helper between Flower records and the torch core.

A :class:`FlatSpec` is taken from the global model's :class:`~flwr.app.ArrayRecord`: the ordered keys,
shapes and dtypes. Floating-point arrays are concatenated, in that key order, into one vector of
length ``d``; other arrays (integer buffers such as BatchNorm's ``num_batches_tracked``) are not part
of the vector and are carried over from the global model unchanged.

Replies are untrusted: :meth:`FlatSpec.read` checks a reply's record against the spec and returns
either the vector or the reason it was rejected, never raising on bad input.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["FlatSpec", "decode_array", "all_finite"]

_NPY_MAGIC = b"\x93NUMPY"
_NPY_STYPE = "numpy.ndarray"  # flwr.app's SType.NUMPY: anything else is refused by Array.numpy()
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
_NPY_MAX_HEADER = 10_000  # numpy's own default limit (np.load's max_header_size)


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...]] | None:
    """``(dtype, shape)`` of a C-order, plain-dtype ``.npy`` header; ``None`` for anything else."""
    try:
        meta = ast.literal_eval(header.decode("latin1"))
        if not isinstance(meta, dict) or set(meta) != {"descr", "fortran_order", "shape"}:
            return None
        if meta["fortran_order"] is not False or not isinstance(meta["descr"], str):
            return None
        dtype = np.dtype(meta["descr"])
        shape = meta["shape"]
        if not isinstance(shape, tuple) or not all(type(s) is int and 0 <= s < 2**40 for s in shape):
            return None
    except Exception:  # noqa: BLE001 - an odd header takes numpy's own reader instead
        return None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return None
    return dtype, shape


def decode_array(arr: Array) -> np.ndarray:
    """The ndarray held by a Flower :class:`~flwr.app.Array`, read-only, without copying its bytes.

    ``Array.numpy()`` runs ``np.load`` on a copy of the bytes and parses the header each time; for
    replies of a known model the header repeats every round, so it is parsed once (cached) and the
    data is viewed in place. Anything that is not a plain C-order ``.npy`` payload of exactly the
    declared size goes through ``Array.numpy()``, so the result, and every error, is numpy's own.
    """
    data = arr.data
    if arr.stype == _NPY_STYPE and isinstance(data, bytes) and data[:6] == _NPY_MAGIC and len(data) > 10:
        major = data[6]
        size = 2 if major == 1 else 4 if major in (2, 3) else 0
        hlen = int.from_bytes(data[8 : 8 + size], "little") if size else 0
        if 0 < hlen <= _NPY_MAX_HEADER:  # larger headers: numpy's reader, which refuses them
            start = 8 + size + hlen
            parsed = _npy_header(data[8 + size : start])
            if parsed is not None:
                dtype, shape = parsed
                count = int(np.prod(shape, dtype=np.int64))
                if len(data) - start == count * dtype.itemsize:
                    return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
    return arr.numpy()


def all_finite(vec: torch.Tensor) -> bool:
    """Whether every entry of ``vec`` is finite, in one reduction when it is.

    A sum with a NaN or an infinity in it is not finite, so a finite sum proves every entry finite;
    only a non-finite sum (a bad entry, or an overflow of huge finite ones) needs the element-wise test.
    """
    if vec.numel() == 0:
        return True
    if bool(torch.isfinite(vec.sum())):
        return True
    return bool(torch.isfinite(vec).all())


@dataclass(frozen=True)
class FlatSpec:
    """Keys, shapes and dtypes of a model record, and where each float array sits in the vector."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    offsets: tuple[int, ...]  # start in the flat vector, -1 for arrays outside it
    dim: int

    @classmethod
    def from_record(cls, record: ArrayRecord) -> FlatSpec:
        keys, shapes, dtypes, offsets = [], [], [], []
        pos = 0
        for key, arr in record.items():
            keys.append(key)
            shapes.append(tuple(int(s) for s in arr.shape))
            dtypes.append(str(arr.dtype))
            if np.issubdtype(np.dtype(arr.dtype), np.floating):
                offsets.append(pos)
                pos += int(np.prod(arr.shape, dtype=np.int64))
            else:
                offsets.append(-1)
        return cls(tuple(keys), tuple(shapes), tuple(dtypes), tuple(offsets), pos)

    # ------------------------------------------------------------------------------------------
    def flatten(self, record: ArrayRecord, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Vector ``(d,)`` of a *trusted* record (the global model); raises on mismatch."""
        vec, reason = self.read(record, dtype=dtype, check_finite=False)
        if vec is None:
            raise ValueError(f"record does not match the model: {reason}")
        return vec

    def read(
        self,
        record: ArrayRecord,
        *,
        dtype: torch.dtype = torch.float32,
        out: torch.Tensor | None = None,
        check_finite: bool = True,
    ) -> tuple[torch.Tensor | None, str | None]:
        """Read an *untrusted* record into ``out`` (or a new vector).

        Returns ``(vector, None)`` or ``(None, reason)``; ``reason`` starts with a short category
        (``keys``, ``shape``, ``dtype``, ``decode``, ``nonfinite``) followed by details.
        """
        if not isinstance(record, (ArrayRecord, Mapping)):
            return None, f"type: expected an ArrayRecord, got {type(record).__name__}"
        got = list(record.keys())
        if got != list(self.keys):
            missing = [k for k in self.keys if k not in record]
            extra = [k for k in got if k not in self.keys]
            detail = f"missing {missing[:5]}" if missing else ""
            detail += (", " if detail else "") + (f"extra {extra[:5]}" if extra else "")
            return None, f"keys: {detail or 'different order'}"
        vec = out if out is not None else torch.empty(self.dim, dtype=dtype)
        for key, shape, dt, off in zip(self.keys, self.shapes, self.dtypes, self.offsets, strict=True):
            arr = record[key]
            if not isinstance(arr, Array):
                return None, f"type: {key} is {type(arr).__name__}, not an Array"
            try:
                nd = decode_array(arr)
            except Exception as exc:  # noqa: BLE001 - any decoding failure means a bad reply
                return None, f"decode: {key}: {type(exc).__name__}"
            if not isinstance(nd, np.ndarray):  # e.g. bytes of a zip archive: np.load gives an NpzFile
                return None, f"decode: {key}: not an npy array ({type(nd).__name__})"
            if tuple(nd.shape) != shape:
                return None, f"shape: {key} has {tuple(nd.shape)}, expected {shape}"
            if str(nd.dtype) != dt:
                return None, f"dtype: {key} is {nd.dtype}, expected {dt}"
            if off < 0:
                continue
            flat = nd.reshape(-1)
            if vec.device.type == "cpu" and vec.dtype in _NUMPY_FLOATS:  # one copy: payload -> vector
                np.copyto(vec[off : off + flat.size].numpy(), flat, casting="unsafe")
            else:
                vec[off : off + flat.size].copy_(torch.from_numpy(np.array(flat)))
        if check_finite and not all_finite(vec):
            return None, "nonfinite: NaN or infinite values"
        return vec, None

    def unflatten(self, vec: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
        """Record with the float arrays taken from ``vec`` and the others copied from ``like``."""
        if vec.shape != (self.dim,):
            raise ValueError(f"vector has shape {tuple(vec.shape)}, expected ({self.dim},)")
        v = vec.detach().to("cpu")
        arrays: dict[str, Array] = {}
        for key, shape, dt, off in zip(self.keys, self.shapes, self.dtypes, self.offsets, strict=True):
            if off < 0:
                arrays[key] = like[key]
                continue
            n = int(np.prod(shape, dtype=np.int64))
            arrays[key] = Array(v[off : off + n].numpy().astype(dt, copy=False).reshape(shape))
        return ArrayRecord(arrays)
