"""Byzantine attacks: pure torch, honest vectors ``(h, d)`` -> Byzantine vectors ``(f, d)``.

Use :func:`build` with a name (``"alie"``, ``"foe"``, ``"optimal-alie"``...) or import the classes
directly. :class:`Adversary` picks the Byzantine nodes and forges their vectors in simulation;
:func:`corrupt_own_update` and :func:`flip_labels` are what a Byzantine client runs on real devices.
"""

from .adversary import Adversary
from .alie import ALittleIsEnough, classic_z, karimireddy_z
from .base import Attack
from .client import corrupt_own_update, flip_labels
from .ipm import InnerProductManipulation
from .label_flip import LabelFlipping, LabLabelFlipping
from .minmax import MinMax, MinSum
from .optimal import OptimalALIE, OptimalIPM
from .registry import ALIASES, ATTACKS, available, build, resolve
from .simple import Gaussian, Infinity, Mimic, SignFlipping

__all__ = [
    "Attack",
    "Adversary",
    "build",
    "available",
    "resolve",
    "ATTACKS",
    "ALIASES",
    "corrupt_own_update",
    "flip_labels",
    "classic_z",
    "karimireddy_z",
    "SignFlipping",
    "Infinity",
    "Gaussian",
    "Mimic",
    "InnerProductManipulation",
    "ALittleIsEnough",
    "OptimalALIE",
    "OptimalIPM",
    "MinMax",
    "MinSum",
    "LabelFlipping",
    "LabLabelFlipping",
]
