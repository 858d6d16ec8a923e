"""Krum and Multi-Krum (Blanchard et al., 2017): select the inputs closest to their neighbours."""

from __future__ import annotations

import torch

from ._linalg import Pairwise, pairwise_sq_distances
from .base import Aggregator, check_int

__all__ = ["Krum", "MultiKrum", "krum_scores"]


def krum_scores(d2: torch.Tensor, k: int) -> torch.Tensor:
    r"""Krum scores :math:`s_i = \sum_{j \in N_i^k} \|x_i - x_j\|^2` from squared distances ``(n, n)``.

    :math:`N_i^k` is the set of the ``k`` nearest *other* inputs of :math:`x_i` (ties broken arbitrarily;
    the sum does not depend on how). Returns float64 ``(n,)``.
    """
    n = d2.shape[0]
    if k == 0:
        return torch.zeros(n, dtype=d2.dtype, device=d2.device)
    inf = torch.full((n,), torch.inf, dtype=d2.dtype, device=d2.device)
    others = d2 + torch.diag(inf)  # a row never counts itself
    return others.topk(k, dim=1, largest=False).values.sum(dim=1)


class _KrumBase(Aggregator):
    requirement = "n > 2f"

    def __init__(self, f: int = 0, k: int | None = None) -> None:
        super().__init__(f)
        self.k = None if k is None else check_int("k", k, low=1)

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return 2 * f + 1

    def params(self) -> dict[str, object]:
        return {} if self.k is None else {"k": self.k}

    def _neighbours(self, n: int, f: int) -> int:
        k = n - f - 1 if self.k is None else self.k
        if k > n - 1:
            raise ValueError(
                f"{self.name}: k={k} nearest neighbours need at least k+1={k + 1} inputs, got n={n}"
            )
        return max(k, 0)

    def _scores(self, x: torch.Tensor, f: int) -> tuple[Pairwise, torch.Tensor]:
        self.check(x.shape[0], f)
        p = pairwise_sq_distances(x, f, self.name)
        self.last_info.update(p.info())
        return p, krum_scores(p.d2, self._neighbours(p.n, p.f))


class Krum(_KrumBase):
    r"""Krum: the input with the smallest sum of squared distances to its ``k`` nearest other inputs.

    .. math::
        \mathrm{Krum}(x_1..x_n) = x_{i^\star},\quad
        i^\star \in \arg\min_i \sum_{j \in N_i^k} \|x_i - x_j\|^2

    ``k`` defaults to ``n - f - 1`` at call time, the convention of ByzFL (the authors' lab of RESAM);
    Blanchard, El Mhamdi, Guerraoui & Stainer (NeurIPS 2017) use ``n - f - 2`` (pass ``k`` explicitly).
    Needs ``n > 2f``. Ties are broken towards the lowest index. Cost: one Gram matrix (one read pass)
    plus ``O(n^2 log n)``.

    Parameters
    ----------
    f
        Number of Byzantine inputs to tolerate.
    k
        Number of nearest other inputs summed in a score (``None``: ``n - f - 1``).

    Notes
    -----
    ``kappa`` is ``None``: RESAM (Farhadkhani et al., 2022) states a resilient-averaging constant for
    Krum in its appendix, which we could not check against the text; no bound is claimed here.
    ``last_info``: ``selected`` (index in the input), ``score``, plus the distance diagnostics.
    """

    name = "krum"

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        p, scores = self._scores(x, f)
        i = int(scores.argmin())
        self.last_info.update(selected=int(p.kept[i]), score=float(scores[i].detach()))
        return p.row(i).clone()


class MultiKrum(_KrumBase):
    r"""Multi-Krum: the average of the ``m`` inputs with the smallest Krum scores.

    .. math::
        \mathrm{MultiKrum}(x_1..x_n) = \frac{1}{m}\sum_{t=1}^{m} x_{\pi(t)},\quad
        s_{\pi(1)} \le \dots \le s_{\pi(n)}

    with :math:`s_i` the Krum score of :class:`Krum` (``k`` nearest other inputs, default ``n - f - 1``).
    ``m`` defaults to ``n - f`` (ByzFL; Blanchard et al., 2017, Multi-Krum with ``m = n - f``). Needs
    ``n > 2f``. Cost: one Gram matrix plus one weighted sum of the ``m`` selected rows (matrix-vector
    products over runs of consecutive selected rows, no copy).

    Parameters
    ----------
    f
        Number of Byzantine inputs to tolerate.
    m
        Number of inputs averaged (``None``: ``n - f`` at call time, after non-finite rows are dropped).
    k
        Number of nearest other inputs in a score (``None``: ``n - f - 1``).

    Notes
    -----
    ``kappa`` is ``None`` (no bound in RESAM's definition that we could verify).
    ``last_info``: ``selected`` (sorted indices of the averaged inputs), plus distance diagnostics.
    """

    name = "multikrum"

    def __init__(self, f: int = 0, m: int | None = None, k: int | None = None) -> None:
        super().__init__(f, k)
        self.m = None if m is None else check_int("m", m, low=1)

    def params(self) -> dict[str, object]:
        return ({} if self.m is None else {"m": self.m}) | super().params()

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        p, scores = self._scores(x, f)
        n = p.n
        m = n - p.f if self.m is None else self.m
        if m > n:
            raise ValueError(f"{self.name}: m={m} exceeds the number of finite inputs n={n}")
        # stable sort: ties go to the lowest index, as in Krum
        best = scores.sort(stable=True).indices[:m]
        w = torch.zeros(n, dtype=torch.float64, device=scores.device)
        w[best] = 1.0 / m
        self.last_info["selected"] = sorted(int(i) for i in p.kept[best.to(p.kept.device)])
        return p.weighted_sum(w)  # reads only the m selected rows, in place
