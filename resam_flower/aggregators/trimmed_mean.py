r"""Coordinate-wise trimmed mean (CWTM)."""

from __future__ import annotations

import torch

from . import _order
from ._coordinatewise import CoordinateWiseRule

__all__ = ["CoordinateWiseTrimmedMean", "coordinate_wise_trimmed_mean", "trimmed_mean_constant"]


def coordinate_wise_trimmed_mean(x: torch.Tensor, f: int, *, method: str = "auto") -> torch.Tensor:
    """Per coordinate, the mean of the sorted values of ranks ``f .. n-f-1`` of a finite ``(n, d)`` tensor."""
    n = x.shape[0]
    if not 0 <= 2 * f < n:
        raise ValueError(f"cwtm needs n > 2f, got n={n}, f={f}")
    keep = n - 2 * f

    def combine(s: torch.Tensor, acc: torch.Tensor | None, out: torch.Tensor) -> None:
        out.copy_(s[f])  # the kept values summed in rank order (as the fused kernel), row by row
        for r in range(f + 1, n - f):
            out.add_(s[r])
        out.div_(keep)

    return _order.coordinatewise(x, range(f, n - f), combine, method=method, fused=("trimmed", f, n - f))


def trimmed_mean_constant(n: int, f: int) -> float:
    r"""Per-coordinate constant ``c = f / (n - f)`` of CWTM (``n > 2f``): the lower bound of any rule.

    Scalar setting: ``m = n - f`` honest values in ``[lo, hi]`` (range ``Δ``, mean ``μ``), ``T`` the
    trimmed mean. The kept values lie in ``[t_lo, t_hi] ⊆ [lo, hi]`` (at most ``f`` values lie outside
    the honest range on either side). Let ``K`` be the ``n - 2f`` kept values, ``B_K`` the ``b``
    Byzantine ones among them, ``R_lo``/``R_hi`` the honest values trimmed at the bottom/top
    (``r = |R_lo|``) and ``B_lo`` the ``f - r`` Byzantine values trimmed at the bottom. Since
    ``Σ_S (v - μ) = 0``: ``(n-2f)(T - μ) = Σ_{B_K}(v - μ) - Σ_{R_hi}(v - μ) + Σ_{R_lo}(μ - v)``.
    Suppose ``T >= μ`` (the other side is symmetric), so ``t_hi >= T >= μ``. Each ``B_K`` term is
    ``<= t_hi - μ``, each ``R_hi`` term ``>= t_hi - μ`` and ``b - |R_hi| = -(f - r)``, so
    ``(n-2f)(T - μ) <= -(f - r)(t_hi - μ) + Σ_{R_lo}(μ - v) <= -(f - r)(T - μ) + Σ_{R_lo}(μ - v)``.
    ``R_lo`` are the ``r`` smallest honest values:
    ``Σ_{R_lo}(μ - v) = r (m - r)/m · (mean of the others - mean of R_lo) <= r (m - r) Δ / m``.
    Hence ``(m - r)(T - μ) <= r (m - r) Δ / m``, i.e. ``T - μ <= r Δ / m <= f Δ / (n - f)``.
    Attained with ``f`` honest values at ``lo``, ``m - f`` at ``hi`` and the Byzantine ones above ``hi``.
    """
    return f / (n - f)


class CoordinateWiseTrimmedMean(CoordinateWiseRule):
    r"""Coordinate-wise trimmed mean: per coordinate drop the ``f`` largest and ``f`` smallest values.

    .. math:: [F(x)]_k = \frac{1}{n - 2f} \sum_{r = f}^{n - f - 1} s_{(r)}^{(k)}

    with :math:`s_{(0)}^{(k)} \le \dots \le s_{(n-1)}^{(k)}` the sorted values of coordinate ``k``
    (ties count with their multiplicity). Requirement ``n > 2f``; ``f = 0`` is the mean. References:
    Yin, Chen, Ramchandran, Bartlett, ICML 2018; Farhadkhani et al., ICML 2022 (RESAM). Same definition
    as ByzFL's ``TrMean``. Rows with non-finite values are dropped first (at most ``f`` of them).

    Computed by a comparator network pruned to the ranks ``f .. n-f-1`` (:mod:`._order`), whose values
    are summed in rank order in the input dtype, then divided by ``n - 2f``: bit for bit the mean of a
    sort's middle ranks summed in rank order. On CPU the network and the sum run as one fused C kernel
    in vector registers (:mod:`._fused`: about 1-2x the time of one read pass ``x.sum(0)`` at
    ``n = 20``, ``d = 10^6``, ``f = 4``); elsewhere, or without a C compiler, as element-wise min/max
    calls on column blocks (about 6x), with the same result. Extra memory: the output (the fallback:
    about ``2n + 2`` scratch rows of one column block per thread).

    Parameters
    ----------
    f
        Number of Byzantine inputs to tolerate.
    method
        Kernel: ``"auto"`` (default), ``"fused"``, ``"network"`` or ``"sort"`` (see
        :func:`._order.coordinatewise`).
    """

    name = "cwtm"
    requirement = "n > 2f"

    def _kernel(self, x: torch.Tensor, f: int) -> torch.Tensor:
        return coordinate_wise_trimmed_mean(x, f, method=self.method)

    def kappa(self, n: int, f: int | None = None, d: int | None = None) -> float | None:
        """``κ = f/(n-f) · sqrt(min(d, n - f - 1))`` for ``n > 2f`` (``None`` otherwise).

        ``c = f/(n-f)`` is :func:`trimmed_mean_constant` (tight in one dimension, optimal per coordinate);
        the dimension factor is :func:`._order.dimension_factor`. ``d=None``: valid in every dimension.
        """
        f = self.f if f is None else f
        if n < 2 * f + 1:
            return None
        return trimmed_mean_constant(n, f) * _order.dimension_factor(n, f, d)
