"""The in-memory form every data source returns: :class:`DataSplit`.

A split is two tensors and a class count: ``images`` float32 of shape ``(N, C, H, W)``, normalised
per channel as ``(x - mean_c) / std_c`` with ``x`` in ``[0, 1]``, and ``labels`` int64 of shape
``(N,)`` with values in ``[0, num_classes)``. Sources convert at this boundary (numpy, PIL, Arrow in;
torch out), so everything downstream is plain :mod:`torch`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["DataSplit", "DataSourceError", "NORMALISATION", "to_float_images"]

#: Per-channel ``(mean, std)`` of the training sets, for pixel values in ``[0, 1]`` (the usual constants,
#: also ByzFL's: MNIST 0.1307/0.3081, Fashion-MNIST 0.2860/0.3530, CIFAR-10 0.4914.../0.2023...).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # sklearn's 8x8 digits, pixel counts 0..16 scaled by 1/16 (mean and std of all 1797 images).
    "digits": ((0.3053,), (0.3760,)),
}


class DataSourceError(RuntimeError):
    """A data source is missing, unreachable or corrupted; the message names the fix."""


@dataclass(frozen=True, repr=False, eq=False)
class DataSplit:
    """One split of a labelled image data set, as tensors.

    Attributes
    ----------
    images
        float32 tensor ``(N, C, H, W)``, normalised.
    labels
        int64 tensor ``(N,)``, values in ``[0, num_classes)``.
    num_classes
        Number of classes of the *data set* (not only those present in this split).
    name
        Source name (``"mnist"``, ``"digits"``...), with the split: ``"mnist:train"``.

    Notes
    -----
    Splits returned by :func:`~resam_flower.data.load_dataset` are cached per process and shared:
    treat their tensors as read-only (index them, which copies, before modifying anything).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str = ""
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must be (N,) with N={self.images.shape[0]}, got shape {tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64, got {self.labels.dtype}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """Shape of one input, ``(C, H, W)`` (what :func:`~resam_flower.models.build_model` takes)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"DataSplit(name={self.name!r}, n={len(self)}, in_shape={self.in_shape}, "
            f"num_classes={self.num_classes}, device={self.images.device})"
        )

    def subset(
        self, indices: torch.Tensor | Sequence[int] | np.ndarray, name: str | None = None
    ) -> DataSplit:
        """A new split holding the rows ``indices`` (copies them)."""
        if isinstance(indices, torch.Tensor):
            idx = indices.to(dtype=torch.int64, device=self.labels.device)
        else:
            idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.labels.device)
        return DataSplit(
            self.images[idx], self.labels[idx], self.num_classes, name or self.name, dict(self.meta)
        )

    def class_counts(self) -> torch.Tensor:
        """Number of samples of each class, int64 ``(num_classes,)``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def to(self, device: torch.device | str) -> DataSplit:
        """The same split on ``device``."""
        return DataSplit(
            self.images.to(device), self.labels.to(device), self.num_classes, self.name, dict(self.meta)
        )


def to_float_images(
    pixels: np.ndarray | torch.Tensor,
    scale: float,
    normalisation: tuple[Sequence[float], Sequence[float]] | None,
) -> torch.Tensor:
    """Pixels ``(N, C, H, W)`` (any numeric dtype) -> float32 ``(pixels * scale - mean_c) / std_c``.

    ``scale`` maps raw values to ``[0, 1]`` (``1/255`` for bytes). ``normalisation=None`` keeps ``[0, 1]``.
    """
    if not isinstance(pixels, torch.Tensor):
        # torch converts, not numpy: numpy's astype into a fresh 188 MB array took 2.4 s here (page faults on
        # its huge-page-advised allocation) against 0.07 s for torch; the same values either way
        arr = np.asarray(pixels)
        with warnings.catch_warnings():  # a read-only buffer (np.frombuffer, np.load) is only read, copied
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            pixels = torch.from_numpy(arr)
    x = pixels.to(torch.float32, copy=True)
    x.mul_(scale)
    if normalisation is not None:
        mean, std = normalisation
        c = x.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"normalisation has {len(mean)} channel(s), images have {c}")
        x.sub_(torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        x.div_(torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
    return x
