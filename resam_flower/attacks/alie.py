r"""A little is enough (ALIE): Byzantine workers shift the mean by a few coordinate-wise std deviations.

Factors ``z`` (every Byzantine worker sends :math:`\mu + z\,\sigma`)
---------------------------------------------------------------------
* ``"classic"`` (the default): Baruch, Baruch & Goldberg's published formula, :func:`classic_z`:
  :math:`s = \lfloor n/2 + 1 \rfloor - f`, :math:`z = \Phi^{-1}\big((n - s)/n\big)`
  (``n = 13, f = 3``: 0.502; ``n = 11, f = 1``: 0.114).
* ``"karimireddy"``: the weaker variant :func:`karimireddy_z`,
  :math:`z = \Phi^{-1}\big((n - f - s)/(n - f)\big)`, from the reference code of Karimireddy, He & Jaggi
  ("Learning from history for Byzantine robust optimization", ICML 2021) and codebases derived from it
  (``n = 13, f = 3``: 0.253; ``n = 11, f = 1``: exactly 0, i.e. the forged vector *is* the honest mean).
* ``"lab"``: the fixed factor of the RESAM authors' lab, :data:`LAB_Z` ``= -1.5``. Their reproduction
  script (LPD-EPFL/ByzantineMomentum, ``reproduce.py``) runs the attack ``little`` with
  ``attack-args = ("factor:1.5", "negative:True")``, and ``attacks/identical.py`` forges
  ``grad_avg + factor * grad_att`` with ``grad_att = grad_stck.var(dim=0).sqrt_()`` (unbiased standard
  deviation) and ``factor = -factor`` when ``negative``: :math:`\mu - 1.5\,\sigma`, i.e. ``z = -1.5`` here.
* ``"byzfl"``: ByzFL's default ``tau = 1.5`` (LPD-EPFL/byzfl, ``byzfl/attacks/attacks.py``,
  ``ALittleIsEnough``: :math:`\mu + \tau\sigma`), i.e. ``z = +1.5``.
* any float.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import torch

from .base import Attack, check_float, honest_mean, honest_std, replicate

__all__ = ["ALittleIsEnough", "classic_z", "karimireddy_z", "LAB_Z", "BYZFL_Z", "Z_PRESETS"]

#: The RESAM authors' lab's fixed ALIE factor with its sign (``mu - 1.5 sigma``; see the module docstring).
LAB_Z = -1.5
#: ByzFL's default ALIE factor ``tau`` (``mu + 1.5 sigma``).
BYZFL_Z = 1.5
#: Names accepted for ``z``: a formula of ``(n, f)`` or a fixed factor.
Z_PRESETS = ("classic", "karimireddy", "lab", "byzfl")


def _majority_gap(n: int, f: int, what: str) -> int:
    """``s = floor(n/2 + 1) - f``: the honest workers the attacker must win over for a majority."""
    s = math.floor(n / 2 + 1) - f
    if n <= f or s <= 0:
        raise ValueError(
            f"{what} ALIE z needs a Byzantine minority (s = floor(n/2 + 1) - f >= 1), got n={n}, f={f}; "
            f"pass z explicitly"
        )
    return s


def classic_z(n: int, f: int) -> float:
    r"""Baruch et al.'s factor for ``n`` workers of which ``f`` are Byzantine (NeurIPS 2019, Algorithm 3).

    :math:`s = \lfloor n/2 + 1 \rfloor - f` honest workers must be won over for a majority, and
    :math:`z = \Phi^{-1}\big((n - s)/n\big)`: the largest shift, in standard deviations, such that for
    Gaussian coordinates ``s`` workers still lie farther from the mean than the Byzantine value.
    Examples: ``z(13, 3) = 0.502``, ``z(11, 1) = 0.114``, ``z(4, 1) = 0.0``.

    Raises :class:`ValueError` when ``s <= 0`` or ``n <= f`` (the Byzantine workers are a majority and
    the formula is undefined: pass ``z`` explicitly).
    """
    s = _majority_gap(n, f, "classic")
    return NormalDist().inv_cdf((n - s) / n)


def karimireddy_z(n: int, f: int) -> float:
    r"""The weaker variant :math:`z = \Phi^{-1}\big((n - f - s)/(n - f)\big)` (``s`` as in :func:`classic_z`).

    Karimireddy, He & Jaggi's reference code (ICML 2021) and codebases derived from it. Never the
    published formula: ``z(13, 3) = 0.253`` (classic 0.502), ``z(11, 1) = 0`` (the forged vector is the
    honest mean: no attack at all), ``z(4, 1) = -0.431``. Raises as :func:`classic_z`.
    """
    s = _majority_gap(n, f, "karimireddy")
    return NormalDist().inv_cdf((n - f - s) / (n - f))


class ALittleIsEnough(Attack):
    r"""A little is enough: every Byzantine worker sends :math:`\mu + z\,\sigma` (coordinate-wise).

    Baruch, Baruch & Goldberg, "A little is enough: circumventing defenses for distributed learning",
    NeurIPS 2019. :math:`\sigma` is the unbiased coordinate-wise standard deviation of the honest vectors.

    Sign convention: ``+ z * sigma``, as ByzFL; a positive ``z`` raises every coordinate by ``z`` of its
    standard deviations. The lab's scripts subtract (``z = "lab"`` is ``-1.5``). The distribution-free
    rules are symmetric, so ``-z`` is about as damaging on average;
    :class:`~resam_flower.attacks.optimal.OptimalALIE` searches both signs.

    Parameters
    ----------
    z : float or str (default: ``"classic"``)
        The factor, or a preset (see the module docstring): ``"classic"`` (Baruch et al.,
        :func:`classic_z` of ``n = h + f`` computed at each call from the number ``h`` of honest vectors:
        0.502 for n = 13, f = 3), ``"karimireddy"`` (:func:`karimireddy_z`), ``"lab"`` (``-1.5``),
        ``"byzfl"`` (``+1.5``; also ``tau=1.5``). ``None`` means ``"classic"``. ``last_info["z"]`` reports
        the factor used.
    """

    name = "alie"
    param_aliases = {"tau": "z"}

    def __init__(self, f: int = 1, z: float | str | None = None) -> None:
        super().__init__(f)
        if isinstance(z, str):
            key = z.strip().lower()
            if key not in Z_PRESETS:
                raise ValueError(f"alie: z must be a number or one of {', '.join(Z_PRESETS)}, got {z!r}")
            self.z: float | str = key
        else:
            self.z = "classic" if z is None else check_float("z", z)

    def factor(self, h: int, f: int) -> float:
        """The ``z`` used for ``h`` honest and ``f`` Byzantine vectors."""
        if self.z == "classic":
            return classic_z(h + f, f)
        if self.z == "karimireddy":
            return karimireddy_z(h + f, f)
        if self.z == "lab":
            return LAB_Z
        if self.z == "byzfl":
            return BYZFL_Z
        return float(self.z)

    @staticmethod
    def forge_with(honest: torch.Tensor, f: int, z: float) -> torch.Tensor:
        """``f`` copies of ``mu + z * sigma`` (the formula, for a given factor)."""
        return replicate(honest_mean(honest).add_(honest_std(honest), alpha=z), f)

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        z = self.factor(honest.shape[0], f)
        self.last_info["z"] = z
        return self.forge_with(honest, f, z)

    def params(self) -> dict[str, Any]:
        return {} if self.z == "classic" else {"z": self.z}
