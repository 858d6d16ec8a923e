"""Nearest Neighbour Mixing (Allouah et al., AISTATS 2023): average each input with its neighbours."""

from __future__ import annotations

import torch

from ._linalg import pairwise_sq_distances
from ._rowops import mix
from .base import PreAggregator

__all__ = ["NearestNeighborMixing", "nearest_neighbours"]


def nearest_neighbours(d2: torch.Tensor, size: int) -> torch.Tensor:
    """Indices ``(n, size)`` of each row's ``size`` nearest rows, the row itself first.

    The row itself is always included, also when duplicates tie with it at distance 0.
    """
    n = d2.shape[0]
    self_first = d2 - torch.diag(torch.ones(n, dtype=d2.dtype, device=d2.device))  # own distance -1
    return self_first.topk(size, dim=1, largest=False, sorted=True).indices


class NearestNeighborMixing(PreAggregator):
    r"""NNM: replace each input by the average of its ``n - f`` nearest neighbours (itself included).

    .. math::
        y_i = \frac{1}{n - f} \sum_{j \in N_i} x_j, \qquad i = 1..n

    where :math:`N_i` holds the ``n - f`` inputs closest to :math:`x_i` in Euclidean distance, :math:`x_i`
    among them. The output keeps ``n`` rows and ``f`` (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot &
    Stephan, "Fixing by Mixing", AISTATS 2023; ByzFL's ``NNM``). Needs ``n > 2f``, the setting of the paper.

    Computed as one mixing matrix ``W`` (``n x n``, rows of ``1/(n-f)`` on the neighbourhoods) applied in
    one matmul ``W @ x``, after one Gram matrix for the distances: two read passes of ``x`` and one write
    of the ``(n, d)`` output, allocated in huge pages on CPU (:func:`._rowops.empty_rows`). Non-finite
    rows are dropped first (``n`` and ``f`` shrink by their number), without copying the others
    (:func:`._rowops.mix`). Cost at ``n = 20``, ``f = 4``, ``d = 10^6``, float32, one CPU thread: about
    7x a read pass ``x.sum(0)``, of which the two ``20 x 20 x d`` matmuls take about 2.5-3x each.
    ``last_info``: the distance diagnostics (see :mod:`._linalg`).
    """

    name = "nnm"
    requirement = "n > 2f"

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return 2 * f + 1

    def _apply(self, x: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
        self.check(x.shape[0], f)
        p = pairwise_sq_distances(x, f, self.name)
        self.last_info.update(p.info())
        n = p.n
        size = n - p.f
        nbrs = nearest_neighbours(p.d2, size)
        w = torch.zeros((n, n), dtype=p.source.dtype, device=p.source.device)
        w.scatter_(1, nbrs.to(p.source.device), 1.0 / size)
        return mix(w, p.source, p.kept if p.dropped else None), p.f
