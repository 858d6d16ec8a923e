"""MoNNA (Farhadkhani et al., ICML 2023): average of the nearest neighbours of one trusted input."""

from __future__ import annotations

import torch

from ._linalg import pairwise_sq_distances, weighted_sum
from .base import Aggregator, NonFiniteInputError, check_int

__all__ = ["MoNNA"]


class MoNNA(Aggregator):
    r"""MoNNA: the average of the ``n - f`` nearest neighbours of a trusted input ``x_idx``, itself included.

    .. math::
        \mathrm{MoNNA}(x_1..x_n) = \frac{1}{n - f} \sum_{j \in N_{\mathrm{idx}}} x_j

    :math:`N_{\mathrm{idx}}` holds the ``n - f`` inputs closest to :math:`x_{\mathrm{idx}}`, itself first
    (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot & Stephan, "Robust collaborative learning with linear
    gradient overhead", ICML 2023; ByzFL's ``MoNNA``). In peer-to-peer learning ``idx`` is the worker's own
    vector, trusted to be honest. Needs ``n > 2f`` and ``idx < n``. ``idx`` always refers to the position
    in the input; other non-finite rows are dropped first, a non-finite trusted row raises
    :class:`NonFiniteInputError`.

    Cost: one Gram matmul plus one weighted sum. ``kappa`` is ``None`` (no bound in RESAM's definition
    that we could verify). ``last_info``: ``selected`` (sorted input indices averaged), distance diagnostics.

    Parameters
    ----------
    f
        Number of Byzantine inputs to tolerate.
    idx
        Position of the trusted input (default 0, as ByzFL).
    """

    name = "monna"
    requirement = "n > 2f"

    def __init__(self, f: int = 0, idx: int = 0) -> None:
        super().__init__(f)
        self.idx = check_int("idx", idx, low=0)

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return max(2 * f + 1, self.idx + 1)

    def params(self) -> dict[str, object]:
        return {"idx": self.idx} if self.idx else {}

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        n = x.shape[0]
        if self.idx >= n:
            raise ValueError(f"{self.name}: idx={self.idx} must be < n={n}")
        self.check(n, f)
        p = pairwise_sq_distances(x, f, self.name)
        self.last_info.update(p.info())
        where = (p.kept == self.idx).nonzero()
        if where.numel() == 0:
            raise NonFiniteInputError(f"{self.name}: the trusted input idx={self.idx} is non-finite")
        i = int(where[0, 0])
        m = p.x.shape[0] - p.f
        row = p.d2[i].clone()
        row[i] = -1.0  # the trusted input is always among its own neighbours
        nbrs = row.topk(m, largest=False).indices
        w = torch.zeros(p.x.shape[0], dtype=torch.float64, device=p.d2.device)
        w[nbrs] = 1.0 / m
        self.last_info["selected"] = sorted(int(j) for j in p.kept[nbrs.to(p.kept.device)])
        return weighted_sum(w, p.x)
