"""CIFAR-10 code paths on synthetic data in CIFAR's shape (no network: the hub call is replaced)."""

from __future__ import annotations

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
    test = load_dataset("cifar10", "test", normalize=False)
    assert test.images.shape == (2, 3, 32, 32)
    expected = batches["test_batch"][0].reshape(2, 3, 32, 32) / 255.0
    assert torch.allclose(test.images, torch.from_numpy(expected).float())
    assert test.labels.tolist() == batches["test_batch"][1]
    train = load_dataset("cifar10", "train", normalize=False)
    expected_labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][1]]
    assert len(train) == 10 and train.labels.tolist() == expected_labels


def test_local_batch_with_foreign_pickle_refused(tmp_path):
    import pickle

    folder, _ = _batches_folder(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(DataSourceError, match="not a CIFAR-10 python batch: refusing to load"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))
