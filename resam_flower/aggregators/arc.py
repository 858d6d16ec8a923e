"""Adaptive robust clipping (ARC): clip the largest inputs to the norm of the next largest."""

from __future__ import annotations

import torch

from ._linalg import drop_nonfinite
from .base import NonFiniteInputError, PreAggregator
from .clipping import clip_rows

__all__ = ["AdaptiveRobustClipping", "arc_count"]


def arc_count(n: int, f: int) -> int:
    r"""Number of inputs ARC clips: :math:`k = \lfloor 2 \frac{f}{n} (n - f) \rfloor`, within ``[0, n-1]``.

    Computed in exact integer arithmetic, ``(2 f (n - f)) // n`` (ByzFL evaluates the same expression in
    floating point).
    """
    if n <= 0:
        return 0
    return max(0, min(n - 1, (2 * f * (n - f)) // n))


class AdaptiveRobustClipping(PreAggregator):
    r"""ARC: clip the ``k`` largest-norm inputs to the norm of the ``(k+1)``-th largest.

    With the input norms sorted in decreasing order, :math:`\|x_{\pi(1)}\| \ge \dots \ge \|x_{\pi(n)}\|`,
    and :math:`k = \lfloor 2 (f/n) (n - f) \rfloor`,

    .. math::

        \mathrm{ARC}_f(x_1, \dots, x_n) = \left(\min\left\{1, \frac{\|x_{\pi(k+1)}\|}{\|x_i\|}\right\} x_i
        \right)_{i=1..n}.

    No parameter besides ``f``; ``(n, f) -> (n, f)``. Reference: Allouah, Guerraoui, Gupta, Jellouli, Rizk,
    Stephan, "The Vital Role of Gradient Clipping in Byzantine-Resilient Distributed Learning", 2024
    (arXiv:2405.14432); ByzFL's ``ARC``.

    Notes
    -----
    Non-finite rows are dropped first (see :mod:`.base`) and ``k`` is computed from the remaining
    ``n - r`` rows and ``f - r``. Inputs tied with the threshold norm are left unchanged, so the result
    does not depend on the order of the inputs (permutation equivariant). ``last_info``:
    ``nonfinite_rows``, ``k``, ``clipped`` (rows actually scaled: ``k`` minus ties), ``threshold``.
    """

    name = "arc"
    requirement = "n >= max(1, f)"

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return max(1, f)

    def _apply(self, x: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
        self.check(x.shape[0], f)
        norms = torch.linalg.vector_norm(x, dim=1)
        ok = torch.isfinite(norms)
        x, f, r, _ = drop_nonfinite(x, f, ok, self.name)
        if x.shape[0] == 0:
            raise NonFiniteInputError(f"{self.name}: every input is non-finite, none left (n=0)")
        if r:
            norms = norms[ok]
        n = x.shape[0]
        k = arc_count(n, f)
        self.last_info["nonfinite_rows"] = r
        self.last_info["k"] = k
        if k == 0:
            self.last_info["clipped"] = 0
            self.last_info["threshold"] = float(norms.max())
            return x, f
        threshold = torch.topk(norms, k + 1).values[k]
        self.last_info["clipped"] = int((norms > threshold).sum())
        self.last_info["threshold"] = float(threshold)
        return clip_rows(x, norms, threshold), f
