"""Reference models by name: ``build_model("mnist-cnn", num_classes=10, in_shape=(1, 28, 28), seed=0)``.

=============  ===========================================  ========================================
name           model                                        parameters (10 classes)
=============  ===========================================  ========================================
``mnist-cnn``  :class:`~.cnn.MnistCNN` conv20-conv50-fc500   431,080 on 1x28x28
``cifar-cnn``  :class:`~.cnn.CifarCNN` small VGG-like        1,310,922 on 3x32x32
``mlp``        :class:`~.mlp.MLP` (``hidden=(100,)``)        79,510 on 1x28x28
``logreg``     :class:`~.mlp.LogisticRegression`             7,850 on 1x28x28
=============  ===========================================  ========================================

With ``seed`` the initial weights depend on the seed only (the global torch RNG is forked, so the
caller's random stream is left untouched); without it they come from the global RNG. Initialisation is
PyTorch's default for each layer (as in ByzFL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._registry import Registry, accepted_params, check_params
from ..aggregators.base import check_int
from .cnn import CifarCNN, MnistCNN
from .mlp import MLP, LogisticRegression

__all__ = ["MODELS", "build_model", "available_models", "check_model", "count_parameters"]

#: name -> model class (constructor ``(num_classes, in_shape, **params)``).
MODELS: dict[str, type[nn.Module]] = {
    "mnist-cnn": MnistCNN,
    "cifar-cnn": CifarCNN,
    "mlp": MLP,
    "logreg": LogisticRegression,
}
_ALIASES = {"cnn-mnist": "mnist-cnn", "cnn-cifar": "cifar-cnn", "logistic-regression": "logreg"}
_REGISTRY: Registry[type[nn.Module]] = Registry("model", MODELS, _ALIASES)


def available_models() -> list[str]:
    """Names :func:`build_model` accepts."""
    return sorted(MODELS)


def check_model(name: str) -> None:
    """:class:`ValueError` for a name :func:`build_model` does not know, listing the available ones."""
    _REGISTRY.resolve(name)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (not buffers) of ``model``: the dimension ``d`` of what workers send."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(
    name: str,
    num_classes: int = 10,
    in_shape: Sequence[int] = (1, 28, 28),
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    **params: Any,
) -> nn.Module:
    """Build the model registered as ``name``.

    Parameters
    ----------
    name
        One of :func:`available_models` (kebab or snake case).
    num_classes
        Output size.
    in_shape
        Shape ``(C, H, W)`` of one input (``DataSplit.in_shape``).
    seed
        Seed of the initial weights (``None``: the global RNG).
    device
        Where to put the model (default: CPU).
    **params
        Model-specific parameters (``hidden=`` for ``mlp``; ``width=``, ``hidden=``, ``dropout=``,
        ``batch_norm=`` for ``cifar-cnn``); kebab-case keys are accepted.
    """
    cls = _REGISTRY.resolve(name)
    params = {k.replace("-", "_"): v for k, v in params.items()}
    accepted = accepted_params(cls, exclude=("self", "num_classes", "in_shape"))
    check_params(f"model {_REGISTRY.canonical(name)!r}", accepted, params)
    in_shape = tuple(in_shape)
    if seed is None:
        model = cls(num_classes, in_shape, **params)
    else:
        seed = check_int("seed", seed, low=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(num_classes, in_shape, **params)
    return model.to(device) if device is not None else model
