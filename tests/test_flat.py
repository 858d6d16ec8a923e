"""resam_flower.flat: the fast .npy decoder, the finiteness test and the record <-> vector round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from resam_flower.flat import FlatSpec, all_finite, decode_array


def _npy(a: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, a, allow_pickle=False)
    else:
        np.lib.format.write_array(buf, a, version=version, allow_pickle=False)
    return buf.getvalue()


def _array(data: bytes, like: np.ndarray) -> Array:
    return Array(dtype=str(like.dtype), shape=tuple(like.shape), stype="numpy.ndarray", data=data)


@pytest.mark.parametrize(
    "a",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.array(3.5),
        np.zeros((0, 5), dtype=np.float32),
        np.arange(7, dtype=np.int64),
        np.array([True, False]),
        np.linspace(-1, 1, 9, dtype=np.float16),
        np.arange(6, dtype=">f4"),  # big-endian
    ],
    ids=["f32-3d", "f64-0d", "empty", "i64", "bool", "f16", "big-endian"],
)
def test_decode_array_equals_numpy_load(a):
    arr = Array(a)
    got = decode_array(arr)
    want = arr.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_decode_array_is_a_view_of_the_bytes():
    arr = Array(np.arange(1000, dtype=np.float32))
    got = decode_array(arr)
    assert not got.flags.writeable  # a view of the immutable payload, not a copy
    assert np.shares_memory(got, np.frombuffer(arr.data, dtype=np.uint8))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_decode_array_reads_every_header_version(version):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(decode_array(_array(_npy(a, version), a)), a)


def test_decode_array_falls_back_to_numpy_for_fortran_order_and_trailing_bytes():
    a = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    np.testing.assert_array_equal(decode_array(_array(_npy(a), a)), a)
    b = np.arange(5, dtype=np.float32)
    padded = _array(_npy(b) + b"\x00" * 8, b)
    np.testing.assert_array_equal(decode_array(padded), padded.numpy())


@pytest.mark.parametrize(
    "data",
    [
        _npy(np.arange(10, dtype=np.float32))[:-4],  # truncated payload
        b"\x93NUMPY\x01\x00\x05\x00{'a'}",  # broken header
        b"not an npy file at all",
        _npy(np.array([1, 2], dtype=object).astype(np.int64)).replace(b"<i8", b"|O8"),  # object dtype
    ],
    ids=["truncated", "bad-header", "garbage", "object"],
)
def test_decode_array_bad_payloads_fail_as_numpy_does(data):
    arr = Array(dtype="float32", shape=(10,), stype="numpy.ndarray", data=data)
    with pytest.raises(Exception) as ours:
        decode_array(arr)
    with pytest.raises(Exception) as theirs:
        arr.numpy()
    assert type(ours.value) is type(theirs.value)


def test_decode_array_refuses_what_array_numpy_refuses():
    a = np.arange(4, dtype=np.float32)
    other = Array(dtype="float32", shape=(4,), stype="torch.tensor", data=_npy(a))
    with pytest.raises(TypeError, match="serialization type"):
        decode_array(other)


def test_decode_array_leaves_oversized_headers_to_numpy():
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }" + b" " * 20_000 + b"\n"
    data = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header + b"\x00" * 4
    arr = Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=data)
    with pytest.raises(ValueError):  # numpy refuses headers above its max_header_size
        decode_array(arr)


def test_all_finite():
    assert all_finite(torch.zeros(0))
    assert all_finite(torch.randn(1000))
    big = torch.full((1000,), 3e38)  # finite entries whose sum overflows: must still be finite
    assert not torch.isfinite(big.sum()) and all_finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(1000)
        x[517] = bad
        assert not all_finite(x)
    x = torch.randn(10)
    x[0], x[1] = float("inf"), -float("inf")
    assert not all_finite(x)


def test_flatspec_round_trip_and_untrusted_reads():
    rec = ArrayRecord(
        {
            "w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "steps": Array(np.array(7, dtype=np.int64)),
            "b": Array(np.array([0.5, -0.5], dtype=np.float32)),
        }
    )
    spec = FlatSpec.from_record(rec)
    assert spec.dim == 8 and spec.offsets == (0, -1, 6)
    vec = spec.flatten(rec)
    torch.testing.assert_close(vec, torch.tensor([0, 1, 2, 3, 4, 5, 0.5, -0.5]))
    back = spec.unflatten(vec * 2, like=rec)
    np.testing.assert_array_equal(back["w"].numpy(), 2 * rec["w"].numpy())
    assert back["steps"].numpy() == 7  # non-float arrays are carried over, not scaled
    bad = ArrayRecord({**{k: v for k, v in rec.items()}, "b": Array(np.array([np.nan, 0], np.float32))})
    vec, reason = spec.read(bad)
    assert vec is None and reason.startswith("nonfinite")
    wrong = ArrayRecord({**{k: v for k, v in rec.items()}, "w": Array(np.zeros((3, 2), np.float32))})
    assert spec.read(wrong)[1].startswith("shape")
