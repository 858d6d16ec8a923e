"""Adaptive robust clipping (ARC): clip the largest inputs to the norm of the next largest."""

from __future__ import annotations

import torch

from .clipping import NormClipping

__all__ = ["AdaptiveRobustClipping", "arc_count"]


def arc_count(n: int, f: int) -> int:
    r"""Number of inputs ARC clips: :math:`k = \lfloor 2 \frac{f}{n} (n - f) \rfloor`, within ``[0, n-1]``.

    Computed in exact integer arithmetic, ``(2 f (n - f)) // n`` (ByzFL evaluates the same expression in
    floating point).
    """
    if n <= 0:
        return 0
    return max(0, min(n - 1, (2 * f * (n - f)) // n))


class AdaptiveRobustClipping(NormClipping):
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

    def _threshold(self, norms: torch.Tensor, f: int) -> torch.Tensor:
        k = arc_count(norms.shape[0], f)
        threshold = torch.topk(norms, k + 1).values[k] if k else norms.max()  # k = 0: nothing is clipped
        self.last_info["k"] = k
        self.last_info["threshold"] = float(threshold.detach())
        return threshold
