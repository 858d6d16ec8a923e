"""Inner-product manipulation ("fall of empires"): Byzantine workers send a negative multiple of the mean."""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, check_float, honest_mean, replicate

__all__ = ["InnerProductManipulation", "DEFAULT_EPS"]

#: Classic "fall of empires" factor (Xie et al., 2020): Byzantine vectors -0.1 * mu stay close to the
#: honest cloud yet pull the aggregate's inner product with the true gradient down.
DEFAULT_EPS = 0.1


class InnerProductManipulation(Attack):
    r"""Inner-product manipulation (IPM, a.k.a. FOE): every Byzantine worker sends :math:`-\varepsilon\mu`.

    :math:`\mathrm{IPM}_\varepsilon(x_1, \dots, x_h) = -\varepsilon \cdot \frac{1}{h}\sum_i x_i`.
    Xie, Koyejo & Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner product
    manipulation", UAI 2020.

    Parameters
    ----------
    eps : float (default: 0.1)
        The factor :math:`\varepsilon`. The default is the classic FOE value 0.1 (small vectors that
        hide inside the honest cloud, aimed at distance-based rules such as Krum). ByzFL's default is
        ``tau = 2.0`` (large vectors, aimed at the mean): pass ``eps=2.0`` (or ``tau=2.0``) to match it.
        :class:`~resam_flower.attacks.optimal.OptimalIPM` tunes it against the rule in use.
    """

    name = "ipm"
    param_aliases = {"tau": "eps", "epsilon": "eps"}

    def __init__(self, f: int = 1, eps: float = DEFAULT_EPS) -> None:
        super().__init__(f)
        self.eps = check_float("eps", eps)

    @staticmethod
    def forge_with(honest: torch.Tensor, f: int, eps: float) -> torch.Tensor:
        """``f`` copies of ``-eps * mu`` (the formula, for a given factor)."""
        return replicate(honest_mean(honest).mul_(-eps), f)

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        return self.forge_with(honest, f, self.eps)

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps}
