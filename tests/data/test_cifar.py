"""CIFAR-10 code paths on synthetic data in CIFAR's shape (no network: the hub call is replaced)."""

from __future__ import annotations

import pickle

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from resam_flower.data import DataSourceError, load_dataset
from resam_flower.data import cifar as cifar_module
from resam_flower.data.cifar import hf_to_arrays


def _hf_cifar_like(n: int, seed: int = 0, mode: str = "RGB") -> tuple[datasets.Dataset, np.ndarray, ...]:
    """An in-memory Dataset with the hub's columns: ``img`` (Image) and ``label`` (ClassLabel(10))."""
    rng = np.random.default_rng(seed)
    shape = (n, 32, 32, 3) if mode == "RGB" else (n, 32, 32)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p, mode=mode) for p in pixels], "label": labels.tolist()}, features=features
    )
    return ds, pixels, labels


def test_hf_to_arrays_channel_first_exact():
    ds, pixels, labels = _hf_cifar_like(7)
    images, y = hf_to_arrays(ds, batch_size=3)  # several batches
    assert images.shape == (7, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images, pixels.transpose(0, 3, 1, 2))
    assert y.dtype == np.int64 and y.tolist() == labels.tolist()


def test_hf_to_arrays_grey_images_get_a_channel():
    ds, pixels, _ = _hf_cifar_like(4, mode="L")
    images, _ = hf_to_arrays(ds)
    assert images.shape == (4, 1, 32, 32) and np.array_equal(images[:, 0], pixels)


def test_hf_to_arrays_missing_column():
    ds, _, _ = _hf_cifar_like(2)
    with pytest.raises(ValueError, match="no column 'image'"):
        hf_to_arrays(ds, image_column="image")


def test_load_cifar10_through_hub_path(monkeypatch, private_cache):
    fakes = {split: _hf_cifar_like(n, seed) for split, n, seed in (("train", 12, 1), ("test", 5, 2))}
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return fakes[split][0]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    train = load_dataset("cifar10", "train")
    assert calls == [("uoft-cs/cifar10", "train")]
    assert train.images.shape == (12, 3, 32, 32) and train.num_classes == 10
    raw = torch.from_numpy(fakes["train"][1].transpose(0, 3, 1, 2) / 255.0).float()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    assert torch.allclose(train.images, (raw - mean) / std, atol=1e-5)
    assert train.labels.tolist() == fakes["train"][2].tolist()
    # converted once: a fresh process (cleared lru cache) reads the .npz, not the hub
    assert (private_cache / "cifar10" / "uoft-cs--cifar10-train.npz").exists()
    from resam_flower.data import sources

    sources._load_cached.cache_clear()
    assert torch.equal(load_dataset("cifar", "train").images, train.images)
    assert calls == [("uoft-cs/cifar10", "train")]
    assert len(load_dataset("cifar-10", "test")) == 5


def test_hub_failure_names_the_fix(monkeypatch):
    def offline(name, split):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError, match="RESAM_CIFAR10_DIR") as err:
        load_dataset("cifar10", "test")
    assert "no route to host" in str(err.value)


def test_local_folder_without_data(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not use the hub"))
    with pytest.raises(DataSourceError, match="cifar-10-batches-py"):
        load_dataset("cifar10", "train", data_dir=str(tmp_path))


def test_bad_split():
    with pytest.raises(ValueError, match="CIFAR-10 split must be 'train' or 'test'"):
        cifar_module.load_cifar10_arrays("valid")


def _batches_folder(root, n_per_batch: int = 2):
    """A miniature ``cifar-10-batches-py``: Python-2 style pickled dicts, as in the real archive."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        batches[name] = (data, [int(v) for v in rng.integers(0, 10, size=n_per_batch)])
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": batches[name][1], "batch_label": name}, f, protocol=2)
    return folder, batches


@pytest.mark.parametrize("use_parent", [True, False])
def test_local_batches_folder(tmp_path, monkeypatch, use_parent):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not use the hub"))
    folder, batches = _batches_folder(tmp_path)
    monkeypatch.setenv("RESAM_CIFAR10_DIR", str(tmp_path if use_parent else folder))
    monkeypatch.setenv("RESAM_CIFAR10_UNVERIFIED", "1")  # a miniature CIFAR-10, not the official bytes
    test = load_dataset("cifar10", "test", normalize=False)
    assert test.images.shape == (2, 3, 32, 32)
    expected = batches["test_batch"][0].reshape(2, 3, 32, 32) / 255.0
    assert torch.allclose(test.images, torch.from_numpy(expected).float())
    assert test.labels.tolist() == batches["test_batch"][1]
    train = load_dataset("cifar10", "train", normalize=False)
    expected_labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][1]]
    assert len(train) == 10 and train.labels.tolist() == expected_labels


def test_local_batch_with_foreign_pickle_refused(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("RESAM_CIFAR10_UNVERIFIED", "1")
    folder, _ = _batches_folder(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(DataSourceError, match="not a CIFAR-10 python batch: refusing to load"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


def test_batches_other_than_the_official_ones_are_refused_by_default(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.delenv("RESAM_CIFAR10_UNVERIFIED", raising=False)
    folder, _ = _batches_folder(tmp_path)
    md5 = hashlib.md5((folder / "test_batch").read_bytes()).hexdigest()  # independent of the loader
    with pytest.raises(
        DataSourceError, match=rf"MD5 {md5}, not the official 40351d587109b95175f43aff81a1287e"
    ):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert cifar_module.CIFAR10_MD5["test_batch"] == "40351d587109b95175f43aff81a1287e"  # torchvision's


def test_a_verified_hash_is_read(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.delenv("RESAM_CIFAR10_UNVERIFIED", raising=False)
    folder, batches = _batches_folder(tmp_path)
    official = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in cifar_module.CIFAR10_MD5}
    monkeypatch.setattr(cifar_module, "CIFAR10_MD5", official)  # as if these were the official files
    images, labels = cifar_module.load_cifar10_arrays("test", data_dir=tmp_path)
    assert np.array_equal(images, batches["test_batch"][0].reshape(2, 3, 32, 32))
    assert labels.tolist() == batches["test_batch"][1]


def test_oversized_batch_refused_before_it_is_read(tmp_path, monkeypatch):
    import builtins

    monkeypatch.setenv("RESAM_CIFAR10_UNVERIFIED", "1")
    folder, _ = _batches_folder(tmp_path)
    with open(folder / "test_batch", "r+b") as fh:  # sparse: 1 byte more than allowed, no disk used
        fh.truncate(cifar_module.MAX_BATCH_BYTES + 1)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    with pytest.raises(DataSourceError, match=rf"{cifar_module.MAX_BATCH_BYTES + 1} bytes, more than the"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert not [f for f in opened if f.endswith("test_batch")]


def _memo_bomb() -> bytes:
    """9 bytes: None stored at memo index 2**32 - 16 (the unpickler grows its memo table to it)."""
    import struct

    return b"\x80\x02N" + b"r" + struct.pack("<I", 0xFFFFFFF0) + b"."


def _reconstruct_bomb() -> bytes:
    """~100 bytes: numpy's _reconstruct asked for a 1 GiB array (what numpy pickles do with shape (0,))."""
    return (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01J\x00\x00\x00\x40\x85q\x02"
        b"c_codecs\nencode\nX\x01\x00\x00\x00bX\x06\x00\x00\x00latin1\x86R\x87R."
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_memo_bomb(), "memo index 4294967280"),
        (_reconstruct_bomb(), r"an array of shape \(1073741824,\) \(1073741824 bytes\)"),
        (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R.", "refusing dtype object"),
        (b"\x80\x02X\xff\xff\xff\x7fab.", "malformed data pickle"),
    ],
    ids=["memo", "reconstruct", "object-dtype", "truncated"],
)
def test_small_pickles_asking_for_huge_memory_are_refused(tmp_path, monkeypatch, payload, message):
    from resam_flower.data.safe_pickle import loads_arrays

    with pytest.raises(pickle.UnpicklingError, match=message):
        loads_arrays(payload)
    monkeypatch.setenv("RESAM_CIFAR10_UNVERIFIED", "1")
    folder, _ = _batches_folder(tmp_path)
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DataSourceError, match=message):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8 rows of 3072 pixels"),
        ({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}, "uint8 rows of 3072 pixels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, r"labels must be in 0..9, got 0..10"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images but labels of shape"),
        ([1, 2], "uint8 rows of 3072 pixels"),
    ],
)
def test_batch_structure_is_checked(tmp_path, monkeypatch, entry, message):
    monkeypatch.setenv("RESAM_CIFAR10_UNVERIFIED", "1")
    folder, _ = _batches_folder(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DataSourceError, match=message):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))
