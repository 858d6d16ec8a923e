"""A little is enough (ALIE): Byzantine workers shift the mean by a few coordinate-wise std deviations."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import torch

from .base import Attack, check_float, honest_mean, honest_std, replicate

__all__ = ["ALittleIsEnough", "classic_z"]


def classic_z(n: int, f: int) -> float:
    r"""Baruch et al.'s factor from ``n`` workers of which ``f`` Byzantine.

    :math:`s = \lfloor n/2 + 1 \rfloor - f` honest workers must be won over for a majority, and
    :math:`z = \Phi^{-1}\big((n - f - s)/(n - f)\big)` is the largest shift (in standard deviations) such
    that, for Gaussian honest coordinates, that many honest values still lie beyond the Byzantine one
    (the cdf argument follows Karimireddy et al.'s reference code). Examples: ``z(13, 3) = 0.253``,
    ``z(25, 5) = 0.253``, ``z(4, 1) = -0.431`` (too few workers for the attack to hide).

    Raises :class:`ValueError` when ``s <= 0`` or ``n <= f`` (the Byzantine workers are a majority and
    the formula is undefined: pass ``z`` explicitly).
    """
    s = math.floor(n / 2 + 1) - f
    if n <= f or s <= 0:
        raise ValueError(
            f"classic ALIE z needs a Byzantine minority (s = floor(n/2 + 1) - f >= 1), got n={n}, f={f}; "
            f"pass z explicitly"
        )
    return NormalDist().inv_cdf((n - f - s) / (n - f))


class ALittleIsEnough(Attack):
    r"""A little is enough: every Byzantine worker sends :math:`\mu + z\,\sigma` (coordinate-wise).

    Baruch, Baruch & Goldberg, "A little is enough: circumventing defenses for distributed learning",
    NeurIPS 2019. :math:`\sigma` is the unbiased coordinate-wise standard deviation of the honest vectors.

    Sign convention: ``+ z * sigma``, as in ByzFL and PAPER.md; a positive ``z`` raises every coordinate
    by ``z`` of its standard deviations. (The distribution-free rules are symmetric, so ``-z`` is as
    damaging on average; :class:`~resam_flower.attacks.optimal.OptimalALIE` searches both signs.)

    Parameters
    ----------
    z : float, optional
        The factor. Default: the classic :func:`classic_z` ``(n, f)`` with ``n = h + f`` computed at each
        call from the number ``h`` of honest vectors (0.253 for n=13, f=3). ByzFL's default is
        ``tau = 1.5``: pass ``z=1.5`` (or ``tau=1.5``) to match it. ``last_info["z"]`` reports the factor
        used.
    """

    name = "alie"
    param_aliases = {"tau": "z"}

    def __init__(self, f: int = 1, z: float | None = None) -> None:
        super().__init__(f)
        self.z = None if z is None else check_float("z", z)

    def factor(self, h: int, f: int) -> float:
        """The ``z`` used for ``h`` honest and ``f`` Byzantine vectors (classic unless ``z`` is set)."""
        return classic_z(h + f, f) if self.z is None else self.z

    @staticmethod
    def forge_with(honest: torch.Tensor, f: int, z: float) -> torch.Tensor:
        """``f`` copies of ``mu + z * sigma`` (the formula, for a given factor)."""
        return replicate(honest_mean(honest).add_(honest_std(honest), alpha=z), f)

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        z = self.factor(honest.shape[0], f)
        self.last_info["z"] = z
        return self.forge_with(honest, f, z)

    def params(self) -> dict[str, Any]:
        return {} if self.z is None else {"z": self.z}
