"""ClientApp side of RESAM: the momentum mod, the ready PyTorch worker, Byzantine behaviours."""

from .momentum import GRADIENT_FLAG, MOMENTUM_STATE_KEY, momentum_mod

__all__ = ["momentum_mod", "MOMENTUM_STATE_KEY", "GRADIENT_FLAG"]
