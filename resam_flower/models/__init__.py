"""Reference models of the RESAM experiments, by name (plain :mod:`torch.nn`, outputs are logits).

>>> from resam_flower.models import build_model, count_parameters
>>> count_parameters(build_model("mnist-cnn", 10, (1, 28, 28), seed=0))
431080
"""

from .cnn import CifarCNN, MnistCNN
from .mlp import MLP, LogisticRegression
from .registry import MODELS, available_models, build_model, count_parameters

__all__ = [
    "build_model",
    "available_models",
    "count_parameters",
    "MODELS",
    "MnistCNN",
    "CifarCNN",
    "MLP",
    "LogisticRegression",
]
