"""The one flatten/unflatten helper between Flower records and the torch core.

A :class:`FlatSpec` is taken from the global model's :class:`~flwr.app.ArrayRecord`: the ordered keys,
shapes and dtypes. Floating-point arrays are concatenated, in that key order, into one vector of
length ``d``; other arrays (integer buffers such as BatchNorm's ``num_batches_tracked``) are not part
of the vector and are carried over from the global model unchanged.

Replies are untrusted: :meth:`FlatSpec.read` checks a reply's record against the spec and returns
either the vector or the reason it was rejected, never raising on bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["FlatSpec"]


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
                nd = arr.numpy()
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
            t = torch.from_numpy(np.ascontiguousarray(nd).reshape(-1))
            vec[off : off + t.numel()].copy_(t)
        if check_finite and not bool(torch.isfinite(vec).all()):
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
