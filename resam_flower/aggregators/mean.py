"""Plain average: the non-robust baseline."""

from __future__ import annotations

import torch

from ._linalg import drop_nonfinite, finite_rows
from .base import Aggregator

__all__ = ["Mean"]


class Mean(Aggregator):
    r"""Arithmetic mean :math:`\frac{1}{n}\sum_i x_i`.

    Not robust: a single input can move it arbitrarily (no finite :math:`\kappa` for ``f >= 1``). Rows
    with non-finite values are dropped when at most ``f`` of them are (see :mod:`.base`).
    """

    name = "mean"
    requirement = "n >= 1"

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        x, f, k, _ = drop_nonfinite(x, f, finite_rows(x), self.name)
        self.last_info["nonfinite_rows"] = k
        return x.mean(dim=0)

    def kappa(self, n: int, f: int | None = None, d: int | None = None) -> float | None:
        f = self.f if f is None else f
        return 0.0 if f == 0 else None
