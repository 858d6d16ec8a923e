r"""Mean around median (MeaMed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _order
from ._coordinatewise import CoordinateWiseRule

__all__ = ["MeanAroundMedian", "mean_around_median", "mean_of_closest"]

_NEG_ZERO = -0.0


def mean_around_median(x: torch.Tensor, f: int, *, method: str = "auto") -> torch.Tensor:
    r"""Per coordinate, the mean of the ``n - f`` values closest to the median (:class:`MeanAroundMedian`).

    ``x`` is a finite ``(n, d)`` tensor and ``n > 2f``: :func:`mean_of_closest` with ``beta = n - f``.
    """
    n = x.shape[0]
    if not 0 <= 2 * f < n:
        raise ValueError(f"meamed needs n > 2f, got n={n}, f={f}")
    return mean_of_closest(x, n - f, method=method)


def mean_of_closest(
    v: torch.Tensor, beta: int, *, rows: Sequence[int] | None = None, method: str = "auto"
) -> torch.Tensor:
    r"""Per column of ``v`` ``(t, c)`` (or of its ``rows``): the mean of the ``beta`` values closest to the
    column's median (MeaMed with ``f = t - beta``; Bulyan's coordinate-wise phase).

    With the ``t`` values of a column sorted, :math:`s_{(0)} \le \dots \le s_{(t-1)}`, the median ``M``
    (mean of the two middle values for even ``t``) and ``F = t - beta``, the ``beta`` closest values are
    the window :math:`s_{(L)} .. s_{(L+\beta-1)}` with

    .. math:: L = \min\{\, l \in [0, F) : M - s_{(l)} \le s_{(l+\beta)} - M \,\}\ (\text{or } F):

    sliding the window up drops :math:`s_{(l)}` for :math:`s_{(l+\beta)}` only while the latter is
    strictly closer. A value below the median and one above it equally far from it: the smaller is
    kept, so the result is "the ``beta`` values with the smallest ``|s - M|``, ties in distance going
    to the smaller value". Distances are the rounded ``M - s`` and ``s - M`` in the input dtype; two
    infinite distances are a tie too (the smaller value is kept).

    The window is assembled from sorted values: with ``nk_l`` the rounded test
    :math:`(s_{(l+\beta)} - M) - (M - s_{(l)}) < 0` ("the window starts above ``l``", monotone in ``l``),
    rank ``r`` is in the window iff ``r >= F`` or not ``nk_r``, and ``r < beta`` or ``nk_{r-beta}``. The
    window's values are summed in rank order (from ``-0.0``, the others adding ``-0.0``: the same bits as
    summing ``s_(L) .. s_(L+beta-1)`` in order), then divided by ``beta``.

    Computed with the comparator network of :mod:`._order` sorting every rank (``method``: ``"auto"``,
    ``"fused"``, ``"network"`` or ``"sort"``; ``rows`` are read in place, not copied). On CPU the whole
    computation is one fused C kernel in vector registers (:mod:`._fused`); elsewhere, or without a C
    compiler, element-wise calls on single rows of a column block (one call on several rows would fork
    OpenMP threads inside the kernel's worker threads). Both give the same bits. Values must not be NaN.
    """
    t = v.shape[0] if rows is None else len(rows)
    if not 0 < beta <= t:
        raise ValueError(f"mean_of_closest needs 0 < beta <= t, got beta={beta}, t={t}")
    big = t - beta  # F: ranks that can be dropped below (and above) the window
    mid = [(t - 1) // 2] if t % 2 else [t // 2 - 1, t // 2]

    def combine(s: torch.Tensor, acc: torch.Tensor | None, out: torch.Tensor) -> None:
        sr = s.unbind(0)
        nk = []
        if big:
            if len(mid) == 1:
                med = sr[mid[0]]
            else:  # two products and a sum, as the fused kernel
                med = torch.mul(sr[mid[0]], 0.5).add_(torch.mul(sr[mid[1]], 0.5))
            for lo in range(big):  # nk_l: (s_(l+beta) - M) - (M - s_(l)) < 0 (NaN: False)
                nk.append(torch.sub(sr[lo + beta], med).sub_(torch.sub(med, sr[lo])).lt(0))
        out.fill_(-0.0)
        for r in range(t):
            low, high = r < big, r >= beta
            if not (low or high):
                out.add_(sr[r])
                continue
            if low and high:
                cond = torch.logical_and(nk[r - beta], torch.logical_not(nk[r]))
            else:
                cond = torch.logical_not(nk[r]) if low else nk[r - beta]
            out.add_(torch.where(cond, sr[r], _NEG_ZERO))
        out.div_(beta)

    return _order.coordinatewise(v, range(t), combine, method=method, rows=rows, fused=("closest", beta))


class MeanAroundMedian(CoordinateWiseRule):
    r"""Mean around median: per coordinate, the mean of the ``n - f`` values closest to the median.

    With the values of coordinate ``k`` sorted, :math:`s_{(0)} \le \dots \le s_{(n-1)}`, the median
    ``M`` (mean of the two middle values for even ``n``) and ``m = n - f``, the ``m`` values closest to
    ``M`` are a window :math:`s_{(L)}, \dots, s_{(L+m-1)}` with ``0 <= L <= f``, and

    .. math:: [F(x)]_k = \frac{1}{m} \sum_{r=L}^{L+m-1} s_{(r)},\qquad
              L = \min\{\, l \in [0, f) : M - s_{(l)} \le s_{(l+m)} - M \,\}\ (\text{or } f).

    **Tie-breaking** (deterministic, depends on values only, so the rule is permutation invariant):
    when a value below the median and one above it are equally far from it, the *smaller* value is
    taken; equal values are interchangeable. In exact arithmetic this is "the ``m`` values with the
    smallest ``|s - M|``, ties in distance going to the smaller value". Distances are the rounded
    ``M - s`` and ``s - M`` in the input dtype.

    Difference with ByzFL's ``Meamed`` (0.0.11): ByzFL takes the ``m`` smallest ``|x_i - M|`` with
    ``torch.topk``, so distance ties between different values are broken by the row order (not
    permutation invariant); it computes ``M`` with ``torch.quantile`` (``M = s_a + 0.5 (s_b - s_a)``,
    vs ``0.5 s_a + 0.5 s_b`` here: equal up to one rounding); it converts torch inputs to float32.
    Without distance ties the rules agree (tested).

    Requirement ``n > 2f`` (as ByzFL). Reference: Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant
    SGD", 2018; resilient averaging: Farhadkhani et al., ICML 2022 (RESAM). Rows with non-finite values
    are dropped first (at most ``f`` of them, see :mod:`.base`).

    Computed by :func:`mean_of_closest` (``beta = n - f``, the kernel of Bulyan's coordinate-wise phase
    too): a comparator network (:mod:`._order`) that sorts each column, finds the median, the window's
    start and sums the window in rank order. On CPU one fused C kernel does all of it in vector registers
    (:mod:`._fused`): about 1-2x the time of one read pass ``x.sum(0)`` at ``n = 20``, ``d = 10^6``,
    ``f = 4``, float32 (ByzFL's ``Meamed``: over 100x). Elsewhere, or without a C compiler, element-wise
    calls on single rows of column blocks (7-10x), with the same result. Extra memory: the output (the
    fallback: about ``2n + 2`` scratch rows of one column block per thread, plus a few temporaries). Finite
    inputs so large that ``M - s`` overflows (beyond ~1e38 in float32) give non-finite results, as any
    averaging rule would.

    Parameters
    ----------
    f
        Number of Byzantine inputs to tolerate.
    method
        Kernel: ``"auto"`` (default), ``"fused"``, ``"network"`` or ``"sort"`` (see
        :func:`._order.coordinatewise`).
    """

    name = "meamed"
    requirement = "n > 2f"

    def _kernel(self, x: torch.Tensor, f: int) -> torch.Tensor:
        return mean_around_median(x, f, method=self.method)

    def kappa(self, n: int, f: int | None = None, d: int | None = None) -> float | None:
        r"""``κ = 2f/(n-f) · sqrt(min(d, n - f - 1))`` for ``n > 2f`` (``None`` otherwise).

        Per coordinate (honest values in ``[lo, hi]``, range ``Δ``, mean ``μ``; median ``M`` in
        ``[lo, hi]`` as ``n > 2f``; window ``W`` of the ``m = n - f`` values closest to ``M``): ``W \ S``
        and ``S \ W`` both have ``j <= f`` elements, so
        ``m (F - μ) = Σ_{W \ S} v - Σ_{S \ W} u``. Pair each ``v`` with a ``u``: ``u`` was not chosen,
        so ``|v - M| <= |u - M| <= Δ`` and ``|v - u| <= 2Δ``; hence ``|F - μ| <= 2fΔ/m``. (The other
        route, ``|F - M| <= Δ`` plus the median's ``⌊n/2⌋Δ/m``, is never smaller when ``n > 2f``.)
        Dimension factor: :func:`._order.dimension_factor`.
        """
        f = self.f if f is None else f
        if n < 2 * f + 1:
            return None
        return 2 * f / (n - f) * _order.dimension_factor(n, f, d)
