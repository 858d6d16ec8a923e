r"""Inner-product manipulation ("fall of empires"): Byzantine workers send a negative multiple of the mean.

Factors ``eps`` (every Byzantine worker sends :math:`-\varepsilon\mu`)
---------------------------------------------------------------------
* ``0.1`` (the default, :data:`DEFAULT_EPS`): the classic FOE value of Xie, Koyejo & Gupta.
* ``"lab"``: the RESAM authors' lab's FOE, :data:`LAB_EPS` ``= 0.1``. Their reproduction script
  (LPD-EPFL/ByzantineMomentum, ``reproduce.py``) runs the attack ``empire`` with ``factor:1.1``; that name
  is registered by ``attacks/identical.py`` (not the ``empire-strict`` of ``attacks/empire.py``), which
  forges ``grad_avg + factor * grad_att`` with ``grad_att = -grad_avg``: :math:`\mu - 1.1\mu = -0.1\mu`.
  The lab's *factor* 1.1 is therefore ``eps = factor - 1 = 0.1`` here (:func:`eps_from_lab_factor`).
* ``"byzfl"``: ByzFL's default ``tau = 2.0`` (LPD-EPFL/byzfl, ``InnerProductManipulation``: ``-tau * mu``).
* any float.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, check_float, honest_mean, replicate

__all__ = ["InnerProductManipulation", "DEFAULT_EPS", "LAB_FACTOR", "LAB_EPS", "BYZFL_EPS", "EPS_PRESETS",
           "eps_from_lab_factor"]

#: Classic "fall of empires" factor (Xie et al., 2020): Byzantine vectors -0.1 * mu stay close to the
#: honest cloud yet pull the aggregate's inner product with the true gradient down.
DEFAULT_EPS = 0.1
#: The lab's FOE factor in its own parametrisation ``mu + factor * (-mu)``.
LAB_FACTOR = 1.1
#: ByzFL's default ``tau``.
BYZFL_EPS = 2.0


def eps_from_lab_factor(factor: float) -> float:
    r"""``eps`` of the lab's FOE factor: :math:`\mu + \text{factor}\cdot(-\mu) = -(\text{factor} - 1)\mu`."""
    return check_float("factor", factor) - 1.0


#: The lab's FOE as an ``eps``: ``eps_from_lab_factor(1.1)`` = 0.1 (written exactly, not 1.1 - 1.0 in floats).
LAB_EPS = 0.1
#: Names accepted for ``eps``.
EPS_PRESETS = {"classic": DEFAULT_EPS, "lab": LAB_EPS, "byzfl": BYZFL_EPS}


class InnerProductManipulation(Attack):
    r"""Inner-product manipulation (IPM, a.k.a. FOE): every Byzantine worker sends :math:`-\varepsilon\mu`.

    :math:`\mathrm{IPM}_\varepsilon(x_1, \dots, x_h) = -\varepsilon \cdot \frac{1}{h}\sum_i x_i`.
    Xie, Koyejo & Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner product
    manipulation", UAI 2020.

    Parameters
    ----------
    eps : float or str (default: 0.1)
        The factor :math:`\varepsilon`, or a preset: ``"classic"`` (0.1: small vectors that hide inside the
        honest cloud, aimed at distance-based rules such as Krum), ``"lab"`` (the lab's factor 1.1, i.e.
        0.1: see the module docstring), ``"byzfl"`` (2.0: large vectors, aimed at the mean; also
        ``tau=2.0``). :class:`~resam_flower.attacks.optimal.OptimalIPM` tunes it against the rule in use.
    """

    name = "ipm"
    param_aliases = {"tau": "eps", "epsilon": "eps"}

    def __init__(self, f: int = 1, eps: float | str = DEFAULT_EPS) -> None:
        super().__init__(f)
        if isinstance(eps, str):
            key = eps.strip().lower()
            if key not in EPS_PRESETS:
                raise ValueError(f"ipm: eps must be a number or one of {', '.join(EPS_PRESETS)}, got {eps!r}")
            self.preset: str | None = key
            self.eps = EPS_PRESETS[key]
        else:
            self.preset = None
            self.eps = check_float("eps", eps)

    @staticmethod
    def forge_with(honest: torch.Tensor, f: int, eps: float) -> torch.Tensor:
        """``f`` copies of ``-eps * mu`` (the formula, for a given factor)."""
        return replicate(honest_mean(honest).mul_(-eps), f)

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        return self.forge_with(honest, f, self.eps)

    def params(self) -> dict[str, Any]:
        return {"eps": self.preset if self.preset is not None else self.eps}
