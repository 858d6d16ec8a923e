"""The one flatten/unflatten helper between Flower records and the torch core.

A :class:`FlatSpec` is taken from the global model's :class:`~flwr.app.ArrayRecord`: the ordered keys,
shapes and dtypes. Floating-point arrays are concatenated into one vector of length ``d``: first the
*parameters* (in key order, ``vec[:param_dim]``), then the float *buffers* (BatchNorm's running statistics
and the like, ``vec[param_dim:]``), so that either part is a view. Other arrays (integer buffers such as
BatchNorm's ``num_batches_tracked``) are not part of the vector and are carried over from the global model
unchanged. Which float arrays are buffers is given by the caller (:func:`buffer_keys` of a module), else
by the convention :func:`default_buffer_keys` (PyTorch's BatchNorm names).

Replies are untrusted: :meth:`FlatSpec.read` checks a reply's record against the spec and returns
either the vector or the reason it was rejected, never raising on bad input.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["FlatSpec", "decode_array", "all_finite", "buffer_keys", "default_buffer_keys", "safe_text"]

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


def buffer_keys(model: torch.nn.Module) -> list[str]:
    """Names of ``model``'s floating-point buffers, as they appear in ``model.state_dict()``.

    Pass them to :class:`~resam_flower.strategies.ResilientAveraging` (``buffers=``) when a model's buffers
    do not follow PyTorch's BatchNorm names (:func:`default_buffer_keys`).
    """
    return [name for name, buf in model.named_buffers() if buf is not None and buf.is_floating_point()]


def default_buffer_keys(record: Mapping) -> list[str]:
    """The float arrays of ``record`` whose last dotted name component is a BatchNorm statistic.

    ``running_mean`` and ``running_var`` (``num_batches_tracked`` is an integer and never in the vector).
    """
    from .protocol import BUFFER_SUFFIXES

    out = []
    for key, arr in record.items():
        if key.rsplit(".", 1)[-1] in BUFFER_SUFFIXES and np.issubdtype(np.dtype(arr.dtype), np.floating):
            out.append(key)
    return out


def safe_text(value: object, limit: int = 200) -> str:
    """``value`` as one printable line for a log: control characters escaped, at most ``limit`` characters.

    Reasons and key names that come from replies are attacker-controlled: a newline in them must not forge
    a log line, and a megabyte of text must not flood the log.
    """
    text = str(value)
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[: limit + 1])
    return out if len(out) <= limit else out[: limit - 3] + "..."


@dataclass(frozen=True)
class FlatSpec:
    """Keys, shapes and dtypes of a model record, and where each float array sits in the vector."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    offsets: tuple[int, ...]  # start in the flat vector, -1 for arrays outside it
    dim: int
    param_dim: int = -1  # parameters are vec[:param_dim], float buffers vec[param_dim:]
    buffer_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.param_dim < 0:
            object.__setattr__(self, "param_dim", self.dim)

    @classmethod
    def from_record(cls, record: ArrayRecord, buffers: Iterable[str] | None = ()) -> FlatSpec:
        """The layout of ``record``; float arrays named in ``buffers`` go after the parameters.

        ``buffers=None`` applies :func:`default_buffer_keys`; a name in ``buffers`` that is not a float array
        of ``record`` raises :class:`ValueError`.
        """
        buf = set(default_buffer_keys(record) if buffers is None else buffers)
        floats = [k for k, a in record.items() if np.issubdtype(np.dtype(a.dtype), np.floating)]
        unknown = sorted(buf - set(floats))
        if unknown:
            raise ValueError(f"buffers {unknown[:5]} are not floating-point arrays of the model")
        sizes = {k: int(np.prod(record[k].shape, dtype=np.int64)) for k in floats}
        start, pos = {}, 0
        for key in [k for k in floats if k not in buf] + [k for k in floats if k in buf]:
            start[key] = pos
            pos += sizes[key]
        param_dim = pos - sum(sizes[k] for k in buf)
        keys = tuple(record.keys())
        return cls(
            keys,
            tuple(tuple(int(s) for s in record[k].shape) for k in keys),
            tuple(str(record[k].dtype) for k in keys),
            tuple(start.get(k, -1) for k in keys),
            pos,
            param_dim,
            tuple(k for k in keys if k in buf),
        )

    def params_only(self) -> FlatSpec:
        """The layout of the parameters alone (the keys of a momentum record)."""
        keep = [i for i, k in enumerate(self.keys) if k not in self.buffer_keys and self.offsets[i] >= 0]
        return FlatSpec(
            tuple(self.keys[i] for i in keep),
            tuple(self.shapes[i] for i in keep),
            tuple(self.dtypes[i] for i in keep),
            tuple(self.offsets[i] for i in keep),
            self.param_dim,
        )

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
            return None, safe_text(f"keys: {detail or 'different order'}")
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

    def out_of_range(self, vec: torch.Tensor) -> str | None:
        """The first array whose values in ``vec`` overflow its dtype (e.g. float16) once cast, or None."""
        for key, shape, dt, off in zip(self.keys, self.shapes, self.dtypes, self.offsets, strict=True):
            if off < 0 or np.dtype(dt).itemsize >= 4:
                continue
            n = int(np.prod(shape, dtype=np.int64))
            if n and float(vec[off : off + n].abs().max()) > float(np.finfo(np.dtype(dt)).max):
                return key
        return None

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
