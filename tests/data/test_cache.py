"""Cache folder selection, atomic writes, the inter-process lock and hashing."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

from resam_flower.data import cache


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "x"))
    assert cache.cache_dir("mnist") == tmp_path / "x" / "mnist"
    assert (tmp_path / "x" / "mnist").is_dir()


def test_cache_dir_default_under_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir(create=False) == tmp_path / "resam-flower"


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    cache.atomic_write_bytes(target, b"one")
    cache.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.npz"
    cache.save_arrays(target, x=np.arange(3))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.save_arrays(target, x=np.arange(5))
    assert cache.load_arrays(target)["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_save_and_load_arrays_roundtrip(tmp_path):
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    y = np.array([1, 2, 3], dtype=np.int64)
    out = cache.load_arrays(cache.save_arrays(tmp_path / "a.npz", images=x, labels=y))
    assert out["images"].dtype == np.uint8 and np.array_equal(out["images"], x)
    assert out["labels"].dtype == np.int64 and np.array_equal(out["labels"], y)


def test_file_lock_is_exclusive(tmp_path):
    lock = tmp_path / ".lock"
    inside, overlaps = [0], []

    def worker():
        with cache.file_lock(lock):
            inside[0] += 1
            overlaps.append(inside[0])
            time.sleep(0.02)
            inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1, 1, 1, 1]


def test_sha256_of_bytes_and_file(tmp_path):
    data = b"resam" * 1000
    (tmp_path / "f").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert cache.sha256_of(data) == expected
    assert cache.sha256_of(tmp_path / "f") == expected
