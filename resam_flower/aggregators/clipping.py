"""Static norm clipping: a pre-aggregator that bounds every input's Euclidean norm."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from ._linalg import drop_nonfinite
from .base import PreAggregator, check_float

__all__ = ["Clipping", "NormClipping", "clip_rows"]


def clip_rows(x: torch.Tensor, norms: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    r"""Scale each row ``x_i`` by :math:`\min(1, c / \|x_i\|)` given its precomputed norm.

    Returns ``x`` itself (no copy) when no row exceeds ``threshold``; otherwise a new tensor in one
    pass (the rows under the threshold are multiplied by exactly 1).
    """
    over = norms > threshold
    if not bool(over.any()):
        return x
    scale = torch.where(over, threshold / norms, torch.ones_like(norms))
    return x * scale.to(dtype=x.dtype).unsqueeze(1)


class NormClipping(PreAggregator):
    r"""Base of the norm-clipping pre-aggregators: :math:`x_i \mapsto \min(1, \tau / \|x_i\|_2)\, x_i`.

    The threshold :math:`\tau` comes from :meth:`_threshold` (a constant for :class:`Clipping`, a norm
    order statistic for ARC). Rows whose norm is not finite are dropped first (see :mod:`.base`) and the
    threshold is chosen on the rest, with ``f`` reduced by the number dropped; ``(n, f) -> (n - k, f - k)``.
    ``last_info``: ``nonfinite_rows`` (``k``), ``clipped`` (how many rows were scaled), and what
    :meth:`_threshold` adds.
    """

    @abstractmethod
    def _threshold(self, norms: torch.Tensor, f: int) -> float | torch.Tensor:
        """The clipping threshold for the finite rows' norms ``(n,)`` tolerating ``f``."""

    def _apply(self, x: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
        self.check(x.shape[0], f)
        norms = torch.linalg.vector_norm(x, dim=1)
        ok = torch.isfinite(norms)
        x, f, k, _ = drop_nonfinite(x, f, ok, self.name)  # raises when more than f, or all, are dropped
        if k:
            norms = norms[ok]
        self.last_info["nonfinite_rows"] = k
        threshold = self._threshold(norms, f)
        self.last_info["clipped"] = int((norms > threshold).sum())
        return clip_rows(x, norms, threshold), f


class Clipping(NormClipping):
    r"""Static clipping: :math:`x_i \mapsto \min\left(1, \frac{c}{\|x_i\|_2}\right) x_i`.

    Each input is scaled down to Euclidean norm at most ``c``; shorter inputs are left unchanged
    (including the zero vector). The number of Byzantine inputs is unchanged, ``(n, f) -> (n, f)``.
    This is ByzFL's ``Clipping`` (static clipping, see e.g. Allouah et al., "The Vital Role of Gradient
    Clipping in Byzantine-Resilient Distributed Learning", 2024, for its role against Byzantine inputs).

    Parameters
    ----------
    f
        Number of Byzantine inputs tolerated; only used to bound how many non-finite rows may be dropped.
    c
        Clipping threshold, ``c > 0`` (ByzFL's default 2.0).

    Notes
    -----
    Norms are computed in the input dtype with one read pass (:func:`torch.linalg.vector_norm`); a row
    whose norm is not finite (a NaN, an infinity, or a squared norm beyond the dtype's range) is dropped
    as described in :mod:`.base`. When no row exceeds ``c`` the input tensor is returned itself.
    ``last_info``: ``nonfinite_rows``, ``clipped`` (how many rows were scaled).
    """

    name = "clipping"
    requirement = "n >= 1"

    def __init__(self, f: int = 0, c: float = 2.0) -> None:
        super().__init__(f)
        self.c = check_float("c", c, low=0.0, low_open=True)

    def params(self) -> dict[str, Any]:
        return {"c": self.c}

    def _threshold(self, norms: torch.Tensor, f: int) -> float:
        return self.c
