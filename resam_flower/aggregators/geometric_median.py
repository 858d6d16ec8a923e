"""Geometric median by the smoothed Weiszfeld algorithm, run in coefficient space."""

from __future__ import annotations

import torch

from ._linalg import RTOL, central_row, centred_gram, pairwise_sq_distances, weighted_sum
from .base import Aggregator, check_float, check_int

__all__ = ["GeometricMedian", "GramGeometry", "weiszfeld_weights", "optimal_input"]

_EPS64 = torch.finfo(torch.float64).eps


class GramGeometry:
    r"""Distances to :math:`z = \sum_i a_i x_i` (:math:`\sum_i a_i = 1`) from the Gram matrix ``G`` of
    ``x - x_r`` (``r`` a central row): :math:`\|x_j - z\|^2 = G_{jj} - 2 (Ga)_j + a^\top G a`, and
    :math:`\|\Delta z\|^2 = \Delta a^\top G \Delta a` for :math:`\sum_i \Delta a_i = 0`.

    Inner products, not distances: a row far beyond the others (``1e30`` next to ``1``) pulls ``z`` by
    ``O(1)`` through :math:`a_b \approx 1/\|x_b\|`; :math:`a_b G_{jb}` keeps that pull to relative
    precision, whereas a distance-only formula would need differences of entries of order ``1e60``.
    """

    def __init__(self, g: torch.Tensor) -> None:
        self.g = g

    def distances(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||x_j - z||, magnitude of the terms that cancel in ||x_j - z||^2)``."""
        ga = self.g @ a
        quad = a @ ga
        diag = self.g.diagonal()
        return (diag - 2.0 * ga + quad).clamp(min=0.0).sqrt(), diag + 2.0 * ga.abs() + quad.abs()

    def step(self, delta: torch.Tensor) -> float:
        return float((delta @ (self.g @ delta)).clamp(min=0.0).sqrt())

    def pairwise(self) -> torch.Tensor:
        """``(n, n)`` distances between the inputs."""
        diag = self.g.diagonal()
        return (diag[:, None] + diag[None, :] - 2.0 * self.g).clamp(min=0.0).sqrt()


def optimal_input(geometry: GramGeometry, n: int, nu: float) -> int | None:
    r"""The input that *is* the geometric median, if one is: Weiszfeld only creeps towards such a point.

    For distinct inputs the sum of distances is differentiable everywhere but at the inputs; an input
    :math:`x_k` held by :math:`m_k` inputs is the minimiser iff the pull of the others does not exceed its
    weight, :math:`\|\sum_{i: x_i \ne x_k} (x_i - x_k)/\|x_i - x_k\|\| \le m_k` (the subgradient condition,
    as in Vardi & Zhang, "The multivariate L1-median and associated data depth", PNAS 2000). Checked for every
    input at once in coefficient space: with :math:`W_{ki} = 1/\|x_i - x_k\|` (0 for copies of :math:`x_k`),
    the pull on :math:`x_k` is :math:`\sum_i c_i x_i` with :math:`c = W_k - (\sum_i W_{ki}) e_k`, a zero-sum
    combination whose squared norm is :math:`c^\top G c`. Inputs closer than ``nu`` count as copies.
    """
    dist = geometry.pairwise()
    same = dist <= nu
    w = torch.where(same, torch.zeros_like(dist), 1.0 / dist.clamp(min=nu))
    c = w - torch.diag(w.sum(1))
    pull = (c @ geometry.g * c).sum(1).clamp(min=0.0).sqrt()
    excess = pull - same.sum(1).to(pull.dtype)
    best = int(torch.argmin(excess))
    return best if float(excess[best]) <= 0.0 else None


def weiszfeld_weights(
    geometry: GramGeometry, n: int, nu: float, tol: float, max_iter: int
) -> tuple[torch.Tensor, int, bool, float, float]:
    r"""Smoothed Weiszfeld iterations on coefficients ``a`` (``z = sum_i a_i x_i``), from ``n x n`` data.

    If an input is the minimiser (:func:`optimal_input`), returns it exactly (0 iterations). Otherwise starts
    at the mean (``a_i = 1/n``) and iterates
    :math:`a_i \leftarrow \beta_i / \sum_k \beta_k`, :math:`\beta_i = 1/\max(\nu, \|z - x_i\|)`, until a
    step moves ``z`` by at most ``tol`` times the median distance from ``z`` to the inputs (a scale the
    far rows do not inflate), or ``max_iter`` iterations.

    Returns ``(a, iterations, converged, objective, amplification)``: the objective is
    :math:`\sum_i \|z - x_i\|`; the amplification is the largest ratio of the cancelling terms in a
    squared distance to that squared distance (floored at the median one and at ``nu^2``), i.e. by how
    much the relative error of the ``n x n`` data is magnified in the distances.
    """
    vertex = optimal_input(geometry, n, nu)
    if vertex is not None:  # the median is an input: exact, where Weiszfeld would creep towards it
        a = torch.zeros(n, dtype=torch.float64)
        a[vertex] = 1.0
        dist, mag = geometry.distances(a)
        floor = max(float(dist.median()) ** 2, nu * nu)
        amplification = float((mag / (dist * dist).clamp(min=floor)).max())
        return a, 0, True, float(dist.sum()), amplification
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    dist, mag = geometry.distances(a)
    converged, it = False, max_iter
    for k in range(1, max_iter + 1):
        beta = 1.0 / dist.clamp(min=nu)
        a_new = beta / beta.sum()
        step = geometry.step(a_new - a)
        a = a_new
        dist, mag = geometry.distances(a)
        if step <= tol * float(dist.median()):
            converged, it = True, k
            break
    # below nu a distance only needs to be known to be below nu; the median keeps far rows out of the floor
    floor = max(float(dist.median()) ** 2, nu * nu)
    amplification = float((mag / (dist * dist).clamp(min=floor)).max())
    return a, it, converged, float(dist.sum()), amplification


class GeometricMedian(Aggregator):
    r"""Geometric median :math:`\arg\min_z \sum_i \|z - x_i\|`, approximated by smoothed Weiszfeld.

    Smoothed Weiszfeld (Weiszfeld 1937; smoothing as in Pillutla, Kakade & Harchaoui, "Robust aggregation
    for federated learning", IEEE TSP 2022): :math:`z \leftarrow \sum_i \beta_i x_i / \sum_i \beta_i`,
    :math:`\beta_i = 1/\max(\nu, \|z - x_i\|)`, from the mean, until a step moves :math:`z` by at most
    ``tol`` times the median distance to the inputs, or after ``max_iter`` iterations. Needs ``n > 2f``
    (breakdown point 1/2).

    Every iterate is a convex combination :math:`z = \sum_i a_i x_i`, so the iterations run on the
    ``n`` coefficients, with distances from the Gram matrix of the distance rules (one matmul, centred at a
    central input, see :class:`GramGeometry`); one weighted sum ``a @ x`` then forms the result: two read
    passes of ``x`` whatever the iteration count. If the estimated error of the Gram entries, magnified
    by the cancellation in the distances, exceeds ``1e-2``, the centred Gram matrix is recomputed in
    float64 (one more pass; ``last_info["gram"] == "exact"``).

    Differences from ByzFL 0.0.11 ``GeometricMedian(nu=0.1, T=3)``: ByzFL starts at ``z = 0`` (not
    translation equivariant) and runs a fixed ``T`` iterations; here the start is the mean and the stopping
    rule a tolerance. ``nu`` is absolute, in the units of the inputs.

    Parameters
    ----------
    f
        Number of Byzantine inputs to tolerate (only the condition ``n > 2f`` and non-finite rows use it).
    nu
        Smoothing ``> 0``: distances below ``nu`` count as ``nu`` (default ``1e-6``).
    tol
        Relative step length at which to stop (default ``1e-8``).
    max_iter
        Largest number of iterations (default ``1000``).

    Notes
    -----
    ``kappa`` is ``None``: RESAM's appendix states a constant for the geometric median that we could not
    check against the text. ``last_info``: ``iterations``, ``converged``, ``objective`` (sum of distances),
    ``gram`` (which Gram matrix the iterations used), ``amplification``, distance diagnostics.
    """

    name = "gm"
    requirement = "n > 2f"

    def __init__(self, f: int = 0, nu: float = 1e-6, tol: float = 1e-8, max_iter: int = 1000) -> None:
        super().__init__(f)
        self.nu = check_float("nu", nu, low=0.0, low_open=True)
        self.tol = check_float("tol", tol, low=0.0)
        self.max_iter = check_int("max_iter", max_iter, low=1)

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return 2 * f + 1

    def params(self) -> dict[str, object]:
        return {"nu": self.nu, "tol": self.tol, "max_iter": self.max_iter}

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        self.check(x.shape[0], f)
        p = pairwise_sq_distances(x, f, self.name)
        self.last_info.update(p.info())
        n = p.x.shape[0]
        # The O(n^2)-per-iteration loop runs on a host copy of the n x n Gram: no device sync per step.
        geometry = GramGeometry(p.centred_gram().cpu())
        a, it, converged, obj, amp = weiszfeld_weights(geometry, n, self.nu, self.tol, self.max_iter)
        basis = p.method
        if (p.error + _EPS64) * amp > RTOL and p.method != "exact":
            # the Gram entries are not precise enough for the cancellation in the distances: recompute
            # the centred Gram matrix in float64 (one more pass)
            geometry = GramGeometry(centred_gram(p.x, central_row(p.d2)).cpu())
            a, it, converged, obj, amp = weiszfeld_weights(geometry, n, self.nu, self.tol, self.max_iter)
            basis = "exact"
        self.last_info.update(
            iterations=it, converged=converged, objective=obj, gram=basis, amplification=amp
        )
        return weighted_sum(a, p.x)
