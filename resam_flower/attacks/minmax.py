"""Min-Max and Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): the largest shift that stays inconspicuous."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..aggregators._linalg import gram, sq_distances
from .base import Attack, honest_mean, honest_std, replicate

__all__ = ["MinMax", "MinSum", "PERTURBATIONS"]

#: Perturbation direction names (and accepted spellings from the authors' code).
PERTURBATIONS = {"std": "std", "inverse-std": "std", "unit": "unit", "unit-vec": "unit", "sign": "sign",
                 "sgn": "sign"}


class _DistanceBounded(Attack):
    r"""Shared machinery: :math:`b = \mu + \gamma p`, with the largest :math:`\gamma \ge 0` meeting a
    distance constraint to the honest vectors.

    The squared distance to honest vector ``i`` is a quadratic in :math:`\gamma`:
    :math:`\|\mu + \gamma p - x_i\|^2 = a_i + 2\gamma b_i + \gamma^2 c` with :math:`a_i = \|x_i - \mu\|^2`,
    :math:`b_i = -\langle p, x_i - \mu\rangle`, :math:`c = \|p\|^2`, so the largest feasible
    :math:`\gamma` is a root of a quadratic, computed exactly from the float64 Gram matrix of the centred
    vectors and ``p`` (one read pass over the input). The authors find it by bisection from
    :math:`\gamma = 10`; the closed form is the limit of that bisection. ``last_info["gamma"]`` reports it.

    Parameters
    ----------
    perturbation : {"std", "unit", "sign"} (default: ``"std"``)
        :math:`p = -\sigma` (inverse coordinate-wise standard deviation), :math:`-\mu/\|\mu\|` (inverse
        unit vector) or :math:`-\mathrm{sign}(\mu)`.
    """

    def __init__(self, f: int = 1, perturbation: str = "std") -> None:
        super().__init__(f)
        key = perturbation.strip().lower().replace("_", "-") if isinstance(perturbation, str) else None
        if key not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of 'std', 'unit', 'sign', got {perturbation!r}")
        self.perturbation = PERTURBATIONS[key]

    def direction(self, honest: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """The perturbation ``p`` (shape ``(d,)``, input dtype)."""
        if self.perturbation == "std":
            return -honest_std(honest)
        if self.perturbation == "sign":
            return -torch.sign(mu)
        norm = torch.linalg.vector_norm(mu)
        return torch.where(norm > 0, -mu / norm, torch.zeros_like(mu))

    def _gamma(self, d2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: float) -> float:
        raise NotImplementedError

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        h = honest.shape[0]
        mu = honest_mean(honest)
        p = self.direction(honest, mu)
        g = gram(torch.cat([honest - mu, p.unsqueeze(0)], dim=0))  # (h + 1, h + 1) float64
        d2 = sq_distances(g[:h, :h])
        a = g.diagonal()[:h]
        b = -g[h, :h]
        c = float(g[h, h])
        gamma = 0.0 if c <= 0.0 else max(0.0, self._gamma(d2, a, b, c))
        self.last_info["gamma"] = gamma
        return replicate(mu.add_(p, alpha=gamma), f)

    def params(self) -> dict[str, Any]:
        return {"perturbation": self.perturbation}


def _largest_root(qa: float, qb: float, qc: float) -> float:
    """Largest root of ``qa g^2 + 2 qb g + qc`` (``qa > 0``, ``qc <= 0`` up to rounding)."""
    disc = max(qb * qb - qa * qc, 0.0)
    return (-qb + math.sqrt(disc)) / qa


class MinMax(_DistanceBounded):
    r"""Min-Max: :math:`\mu + \gamma p` with the largest :math:`\gamma` such that
    :math:`\max_i \|b - x_i\| \le \max_{i,j} \|x_i - x_j\|` (no further from any honest vector than the two
    farthest honest vectors are from each other).

    Shejwalkar & Houmansadr, "Manipulating the Byzantine: optimizing model poisoning attacks and defenses
    for federated learning", NDSS 2021 (AGR-agnostic Min-Max). See :class:`_DistanceBounded`.
    """

    name = "minmax"

    def _gamma(self, d2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: float) -> float:
        bound = d2.max()
        disc = (b * b - c * (a - bound)).clamp_(min=0.0)
        return float(((-b + disc.sqrt()) / c).min())


class MinSum(_DistanceBounded):
    r"""Min-Sum: :math:`\mu + \gamma p` with the largest :math:`\gamma` such that
    :math:`\sum_i \|b - x_i\|^2 \le \max_i \sum_j \|x_i - x_j\|^2` (its sum of squared distances to the
    honest vectors is no larger than any honest vector's).

    Shejwalkar & Houmansadr, NDSS 2021 (AGR-agnostic Min-Sum). See :class:`_DistanceBounded`.
    """

    name = "minsum"

    def _gamma(self, d2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: float) -> float:
        bound = float(d2.sum(dim=1).max())
        h = a.shape[0]
        return _largest_root(h * c, float(b.sum()), float(a.sum()) - bound)
