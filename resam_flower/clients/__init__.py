"""ClientApp mods of RESAM: ``momentum_mod`` (momentum at the workers) and ``byzantine_mod`` (a node's
Byzantine role, for experiments). Reusable in any Flower app; the default app's worker lives in
:mod:`resam_flower.app`."""

from .byzantine import byzantine_mod
from .momentum import GRADIENT_FLAG, MOMENTUM_STATE_KEY, momentum_mod

__all__ = ["momentum_mod", "byzantine_mod", "MOMENTUM_STATE_KEY", "GRADIENT_FLAG"]
