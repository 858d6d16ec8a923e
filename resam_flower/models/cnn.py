"""Convolutional reference models of the RESAM experiments (outputs are logits).

* :class:`MnistCNN` (``"mnist-cnn"``): conv20-conv50-fc500-fc10, the MNIST model of the paper and of
  ByzFL's ``cnn_mnist``; **431,080 parameters** on ``(1, 28, 28)`` inputs with 10 classes.
* :class:`CifarCNN` (``"cifar-cnn"``): the small VGG-like CIFAR-10 model the authors' lab uses (the
  model of "Fall of Empires", Xie et al. 2019, as in the lab's Byzantine-momentum experiments);
  **1,310,922 parameters** on ``(3, 32, 32)`` inputs with 10 classes (1,310,154 without batch norm;
  batch norm also adds 768 running-statistics buffer values and 4 integer counters, which are not
  parameters).

Difference from the reference code: ``forward`` returns logits (train with
:class:`torch.nn.CrossEntropyLoss`), where ByzFL's and the lab's models end with ``log_softmax`` (trained
with ``NLLLoss``): the loss, the gradients and the predictions are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..aggregators.base import check_float, check_int

__all__ = ["MnistCNN", "CifarCNN"]


def _check_shape(model: str, in_shape: Sequence[int], min_hw: int) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"{model} needs in_shape (C, H, W), got {tuple(in_shape)}")
    c, h, w = (check_int("in_shape", s, low=1) for s in in_shape)
    if h < min_hw or w < min_hw:
        raise ValueError(f"{model} needs images of at least {min_hw}x{min_hw}, got in_shape={(c, h, w)}")
    return c, h, w


class MnistCNN(nn.Module):
    """``Conv(C,20,5) -> ReLU -> MaxPool2 -> Conv(20,50,5) -> ReLU -> MaxPool2 -> FC(., 500) -> ReLU ->
    FC(500, num_classes)``.

    On ``(1, 28, 28)`` the flattened features are ``50 * 4 * 4 = 800`` and the parameter count is
    ``520 + 25,050 + 400,500 + 5,010 = 431,080``. Other ``(C, H, W)`` with ``H, W >= 16`` work too.
    """

    def __init__(self, num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        c, h, w = _check_shape("mnist-cnn", in_shape, 16)
        num_classes = check_int("num_classes", num_classes, low=2)
        self.features = nn.Sequential(
            nn.Conv2d(c, 20, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 50 * (((h - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 500), nn.ReLU(), nn.Linear(500, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CifarCNN(nn.Module):
    """VGG-like: two blocks of ``[Conv3x3 -> ReLU -> BN] x 2 -> MaxPool2 -> Dropout``, then
    ``FC(., hidden) -> ReLU -> Dropout -> FC(hidden, num_classes)``.

    Widths ``width, width, 2*width, 2*width`` (64, 64, 128, 128 by default), padding 1, so the features
    are ``2 * width * (H // 4) * (W // 4)`` (8,192 on CIFAR). Batch norm comes after the ReLU, as in
    the reference.

    Parameters
    ----------
    num_classes, in_shape
        Output classes and input shape ``(C, H, W)`` (``H, W >= 4``).
    width
        Channels of the first block (the second has twice as many).
    hidden
        Width of the hidden fully connected layer (128 for CIFAR-10 in the reference, 256 for CIFAR-100).
    dropout
        Dropout probability of the three dropout layers.
    batch_norm
        Keep the batch-norm layers (their running statistics are buffers that federated averaging
        treats like any other float array).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_shape: Sequence[int] = (3, 32, 32),
        width: int = 64,
        hidden: int = 128,
        dropout: float = 0.25,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        c, h, w = _check_shape("cifar-cnn", in_shape, 4)
        num_classes = check_int("num_classes", num_classes, low=2)
        width = check_int("width", width, low=1)
        hidden = check_int("hidden", hidden, low=1)
        dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for a, b in ((cin, cout), (cout, cout)):
                layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU()]
                if batch_norm:
                    layers.append(nn.BatchNorm2d(b))
            return [*layers, nn.MaxPool2d(2), nn.Dropout(dropout)]

        self.features = nn.Sequential(*block(c, width), *block(width, 2 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * (h // 4) * (w // 4), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
