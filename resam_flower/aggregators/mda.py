"""Minimum Diameter Averaging (El Mhamdi et al., PODC 2020): average of the tightest ``n - f`` inputs."""

from __future__ import annotations

import math

import torch

from ._linalg import pairwise_sq_distances, weighted_sum
from .base import Aggregator, check_int

__all__ = ["MinimumDiameterAveraging", "min_diameter_removal", "search_size"]

#: Default largest number of candidate removal sets, ``min(2^f, C(n, f))`` (any ``f <= 20`` passes).
MAX_SUBSETS = 1 << 20
#: Largest number of (candidate, pair) cells evaluated at once (bounds memory at a few dozen MB).
_CELLS = 1 << 24


def _first_intact(removed: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """For each row of the boolean mask ``removed`` ``(N, n)``: position of the first pair left intact."""
    out = []
    step = max(1, _CELLS // max(pa.numel(), 1))
    for start in range(0, removed.shape[0], step):
        r = removed[start : start + step]
        intact = ~(r[:, pa] | r[:, pb])
        out.append(intact.to(torch.uint8).argmax(dim=1))
    return torch.cat(out)


def min_diameter_removal(d2: torch.Tensor, f: int) -> tuple[torch.Tensor, float]:
    """The ``f`` rows whose removal leaves the subset of smallest diameter; ``(indices, diameter^2)``.

    Exact branch and bound on the distance matrix. Sort the pairs by decreasing distance; the squared
    diameter left after removing a set ``R`` is the distance of the first pair disjoint from ``R``. If the
    currently largest pair ``(u, v)`` stays, the diameter stays ``D_uv``; so an optimal set contains ``u``
    or ``v``, and the search tree branches on these two only: at most ``2^f`` leaves instead of the
    ``C(n, f)`` removal sets. The tree is expanded level by level as tensors (one boolean mask row per
    node, duplicates merged), never with Python work per node. A greedy matching bounds the pairs to
    scan: once ``f + 1`` disjoint pairs have appeared no ``f`` rows cover them all.
    Ties: the optimal leaf that comes first in the sorted order of the masks.
    """
    n = d2.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=d2.device)
    vals = d2[iu[0], iu[1]]
    order = torch.sort(vals, descending=True, stable=True).indices
    pa, pb, vals = iu[0][order], iu[1][order], vals[order]
    used: set[int] = set()
    matched, t_end = 0, vals.numel()
    for t, (i, j) in enumerate(zip(pa.tolist(), pb.tolist(), strict=True)):
        if i not in used and j not in used:
            used.update((i, j))
            matched += 1
            if matched == f + 1:
                t_end = t + 1
                break
    pa, pb, vals = pa[:t_end], pb[:t_end], vals[:t_end]
    nodes = torch.zeros((1, n), dtype=torch.bool, device=d2.device)
    for _ in range(f):
        first = _first_intact(nodes, pa, pb)
        rows = torch.arange(nodes.shape[0], device=d2.device)
        with_u, with_v = nodes.clone(), nodes.clone()
        with_u[rows, pa[first]] = True
        with_v[rows, pb[first]] = True
        nodes = torch.unique(torch.cat([with_u, with_v]).to(torch.uint8), dim=0).bool()
    diam = vals[_first_intact(nodes, pa, pb)]
    best = int(diam.argmin())
    return nodes[best].nonzero().squeeze(1), float(diam[best])


def search_size(n: int, f: int) -> int:
    """Largest number of candidate removal sets :func:`min_diameter_removal` scores: ``min(2^f, C(n, f))``."""
    return min(1 << f, math.comb(n, f))


class MinimumDiameterAveraging(Aggregator):
    r"""MDA: the average of the ``n - f`` inputs whose set has the smallest diameter.

    .. math::
        \mathrm{MDA}(x_1..x_n) = \frac{1}{n-f}\sum_{i \in S^\star} x_i,\quad
        S^\star \in \arg\min_{|S| = n-f} \max_{i,j \in S}\|x_i - x_j\|

    (El Mhamdi, Guerraoui, Guirguis, Hoang & Rouault, PODC 2020; ByzFL's ``MDA``). RESAM (Farhadkhani et
    al., ICML 2022) proves it is :math:`(f, \kappa)`-resilient averaging with :math:`\kappa = 2f/(n-f)`,
    order-optimal. Needs ``n > 2f``.

    The search is exact: the distance matrix is computed once (one Gram matrix), then a branch and bound
    over removal sets, vectorised level by level (see :func:`min_diameter_removal`), scores at most
    :math:`\min(2^f, \binom{n}{f})` candidate subsets instead of ByzFL's loop over all
    :math:`\binom{n}{n-f}`. Inputs whose count exceeds ``max_subsets`` are refused with a
    :class:`ValueError` naming :math:`\binom{n}{f}` (default :math:`2^{20}`: every ``f <= 20`` passes;
    ``n=20, f=4`` scores at most 16 candidates of the 4,845 subsets). Ties between optimal subsets go to
    a fixed order of the removal masks (ByzFL: the first kept subset in lexicographic order; the two agree
    when the optimum is unique).

    Parameters
    ----------
    f
        Number of Byzantine inputs to tolerate.
    max_subsets
        Largest number of candidate subsets, :math:`\min(2^f, \binom{n}{f})`, searched.

    Notes
    -----
    ``last_info``: ``selected`` (sorted indices averaged), ``diameter``, ``candidates``, distance diagnostics.
    """

    name = "mda"
    requirement = "n > 2f"

    def __init__(self, f: int = 0, max_subsets: int = MAX_SUBSETS) -> None:
        super().__init__(f)
        self.max_subsets = check_int("max_subsets", max_subsets, low=1)

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return 2 * f + 1

    def params(self) -> dict[str, object]:
        return {} if self.max_subsets == MAX_SUBSETS else {"max_subsets": self.max_subsets}

    def kappa(self, n: int, f: int | None = None, d: int | None = None) -> float | None:
        f = self.f if f is None else f
        if n <= 2 * f:
            return None
        return 2.0 * f / (n - f)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        n = x.shape[0]
        self.check(n, f)
        count = search_size(n, f)
        if count > self.max_subsets:
            raise ValueError(
                f"{self.name}: exact search for n={n}, f={f} may score up to min(2^f, C(n, f)) = {count:,} "
                f"candidate subsets (C(n={n}, f={f}) = {math.comb(n, f):,}), more than "
                f"max_subsets={self.max_subsets:,}; lower f, raise max_subsets, or use another rule"
            )
        p = pairwise_sq_distances(x, f, self.name)
        self.last_info.update(p.info())
        m = p.x.shape[0]
        keep = torch.ones(m, dtype=torch.bool, device=p.d2.device)
        diam2 = float(p.d2.max()) if m > 1 else 0.0
        if p.f > 0:
            removed, diam2 = min_diameter_removal(p.d2, p.f)
            keep[removed] = False
        w = keep.to(torch.float64) / (m - p.f)
        self.last_info.update(
            selected=sorted(int(i) for i in p.kept[keep.to(p.kept.device)]),
            diameter=math.sqrt(diam2),
            candidates=search_size(m, p.f),
        )
        return weighted_sum(w, p.x)
