"""Fully connected reference models (outputs are logits).

* :class:`MLP` (``"mlp"``): ``Flatten -> [Linear -> ReLU] x len(hidden) -> Linear``; with the default
  ``hidden=(100,)`` on MNIST it is ByzFL's ``fc_mnist`` (784-100-10, 79,510 parameters).
* :class:`LogisticRegression` (``"logreg"``): one linear layer (7,850 parameters on MNIST). ByzFL's
  ``logreg_mnist`` applies a sigmoid to its output; here the output is the logits of a softmax
  regression (train with :class:`torch.nn.CrossEntropyLoss`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..aggregators.base import check_int

__all__ = ["MLP", "LogisticRegression"]


def _num_inputs(in_shape: Sequence[int]) -> int:
    if len(in_shape) == 0:
        raise ValueError("in_shape must not be empty")
    return math.prod(check_int("in_shape", s, low=1) for s in in_shape)


class MLP(nn.Module):
    """Multi-layer perceptron on flattened inputs.

    Parameters
    ----------
    num_classes
        Output size.
    in_shape
        Shape of one input (any rank; flattened).
    hidden
        Widths of the hidden layers (``()`` gives a linear model).
    """

    def __init__(
        self, num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (100,)
    ) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=2)
        if isinstance(hidden, int):
            hidden = (hidden,)
        widths = [_num_inputs(in_shape), *(check_int("hidden", h, low=1) for h in hidden)]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LogisticRegression(MLP):
    """Softmax regression: ``Flatten -> Linear(prod(in_shape), num_classes)``."""

    def __init__(self, num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__(num_classes, in_shape, hidden=())
