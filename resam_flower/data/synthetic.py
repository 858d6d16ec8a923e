"""Seeded synthetic image classification data with learnable class structure.

Each class ``c`` has a smooth template ``m_c`` (Gaussian noise of the full shape, blurred by average
pooling over ``smooth x smooth`` blocks and upsampled back, then scaled to unit standard deviation).
A sample of class ``c`` is

    x = (separation * m_c + noise * eps) / sqrt(separation^2 + noise^2),    eps ~ N(0, I),

so every pixel has about unit variance (the data come out normalised) and the Bayes classifier is a
nearest-template rule whose accuracy grows with ``separation / noise``. Templates depend on ``seed``
only, so train and test share them; the samples of each split come from their own seeded stream.
Labels are balanced (``N // num_classes`` or one more per class) and shuffled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..aggregators.base import check_float, check_int
from .base import DataSplit

__all__ = ["make_synthetic", "SHAPES"]

#: Default shapes of the named synthetic sources.
SHAPES: dict[str, tuple[int, int, int]] = {
    "synthetic": (1, 28, 28),
    "synthetic-cifar": (3, 32, 32),
}

_SPLITS = {"train": 1, "test": 2}


def _generator(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_synthetic(
    split: str = "train",
    *,
    shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    num_train: int = 5000,
    num_test: int = 1000,
    separation: float = 1.0,
    noise: float = 1.0,
    smooth: int = 4,
    seed: int = 0,
    name: str = "synthetic",
) -> DataSplit:
    """Build one split of a synthetic data set (see the module docstring for the model).

    Parameters
    ----------
    split
        ``"train"`` or ``"test"``.
    shape
        ``(C, H, W)`` of one image.
    num_classes, num_train, num_test
        Number of classes and of samples per split.
    separation, noise
        Template and noise scales; their ratio sets how hard the task is.
    smooth
        Block size of the template blur (1 = white-noise templates).
    seed
        Seeds the templates and the samples: same arguments, same tensors.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W), got {tuple(shape)}")
    c, h, w = (check_int("shape", s, low=1) for s in shape)
    num_classes = check_int("num_classes", num_classes, low=2)
    n = check_int(f"num_{split}", num_train if split == "train" else num_test, low=1)
    separation = check_float("separation", separation, low=0.0)
    noise = check_float("noise", noise, low=0.0)
    if separation == 0.0 and noise == 0.0:
        raise ValueError("separation and noise cannot both be 0")
    smooth = check_int("smooth", smooth, low=1, high=min(h, w))
    seed = check_int("seed", seed, low=0)

    templates = torch.randn(num_classes, c, h, w, generator=_generator(seed, 0))
    if smooth > 1:
        pooled = F.avg_pool2d(templates, smooth, ceil_mode=True)
        templates = F.interpolate(pooled, scale_factor=smooth, mode="nearest")[..., :h, :w]
    flat = templates.reshape(num_classes, -1)
    std = flat.std(dim=1, keepdim=True)
    templates = ((flat - flat.mean(dim=1, keepdim=True)) / std.clamp_min(1e-12)).reshape(num_classes, c, h, w)

    gen = _generator(seed, _SPLITS[split])
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    eps = torch.randn(n, c, h, w, generator=gen)
    images = (separation * templates[labels] + noise * eps) / float(np.hypot(separation, noise))
    meta = {"shape": (c, h, w), "separation": separation, "noise": noise, "seed": seed}
    return DataSplit(images.contiguous(), labels, num_classes, f"{name}:{split}", meta)
