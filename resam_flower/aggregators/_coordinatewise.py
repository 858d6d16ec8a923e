"""What the coordinate-wise rules (cwmed, cwtm, meamed) share: n > 2f, the kernel choice, the screening."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from . import _order
from ._linalg import drop_nonfinite, finite_rows
from .base import Aggregator

__all__ = ["CoordinateWiseRule"]


class CoordinateWiseRule(Aggregator):
    """A rule computed column by column by :func:`._order.coordinatewise`; needs ``n > 2f``.

    Non-finite rows are dropped first (up to ``f``; see :mod:`.base`), then :meth:`_kernel` runs with the
    kernel ``method`` (``"auto"``, ``"network"`` or ``"sort"``).
    """

    requirement = "n > 2f"

    def __init__(self, f: int = 0, method: str = "auto") -> None:
        super().__init__(f)
        if method not in _order.METHODS:
            raise ValueError(f"method must be one of {_order.METHODS}, got {method!r}")
        self.method = method

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return 2 * f + 1

    def params(self) -> dict[str, Any]:
        return {} if self.method == "auto" else {"method": self.method}

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        x, f, k, _ = drop_nonfinite(x, f, finite_rows(x), self.name)
        self.last_info["nonfinite_rows"] = k
        self.check(x.shape[0], f)
        return self._kernel(x, f)

    @abstractmethod
    def _kernel(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """The rule on finite ``(n, d)`` input with ``n > 2f``."""
