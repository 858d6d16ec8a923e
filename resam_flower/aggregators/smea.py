"""SMEA, smallest maximum eigenvalue averaging (Allouah, Guerraoui, Gupta, Pinot, Stephan, ICML 2023)."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import torch

from ._linalg import pairwise_sq_distances, weighted_sum
from .base import Aggregator, NonFiniteInputError, check_int

__all__ = ["SMEA", "subset_top_eigenvalues"]

#: Subsets whose centred Gram matrices are built and diagonalised in one batch.
CHUNK = 8192


@functools.lru_cache(maxsize=16)
def _subsets(n: int, m: int) -> torch.Tensor:
    """All ``C(n, m)`` subsets of ``range(n)`` of size ``m``, lexicographic, as a CPU ``(C, m)`` tensor."""
    return torch.tensor(list(itertools.combinations(range(n), m)), dtype=torch.long).reshape(-1, m)


def subset_top_eigenvalues(g: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
    r""":math:`\lambda_{\max}` of each subset's empirical covariance, from the Gram matrix ``g``.

    For a subset ``S`` of size ``m``, the covariance :math:`\Sigma_S = \frac1m \sum_{i\in S}
    (x_i - \bar x_S)(x_i - \bar x_S)^\top` has the nonzero eigenvalues of :math:`\frac1m P G_{SS} P`,
    :math:`P = I - \frac1m 11^\top` (the centred ``m x m`` Gram matrix), whatever ``d`` is. ``g`` may be
    the Gram matrix or :math:`-D/2` for the squared distances ``D`` (centring removes the difference).
    ``subsets``: ``(B, m)`` indices on ``g``'s device. Returns ``(B,)`` float64.
    """
    n = g.shape[0]
    m = subsets.shape[1]
    flat = subsets.unsqueeze(2) * n + subsets.unsqueeze(1)
    k = g.reshape(-1).take(flat)
    row = k.mean(dim=2, keepdim=True)
    k.sub_(row).sub_(row.transpose(1, 2)).add_(row.mean(dim=1, keepdim=True))
    return torch.linalg.eigvalsh(k)[:, -1].clamp(min=0.0) / m


def search(g: torch.Tensor, subsets: torch.Tensor, rank: int) -> tuple[int, float, int]:
    r"""Position in ``subsets`` of the smallest :math:`\lambda_{\max}`, its value, how many were computed.

    Exact branch and bound. The deviations :math:`\|x_i - \bar x_S\|^2 = g_{ii} - \frac2m \sum_{j \in S}
    g_{ij} + \frac1{m^2} \sum_{j,k \in S} g_{jk}` of every subset cost ``O(n^2)``, and give two lower
    bounds: :math:`\lambda_{\max}(\Sigma_S) \ge \mathrm{tr}\,\Sigma_S / r` (``r = min(m - 1, d)``, the
    rank bound) and :math:`\lambda_{\max}(\Sigma_S) \ge \max_{i \in S} \|x_i - \bar x_S\|^2 / m` (the
    variance along one deviation). Subsets are diagonalised in increasing order of the larger bound, in
    growing batches, until the next bound exceeds the best eigenvalue found (a relative slack of
    ``1e-9`` guards rounding). In high dimension the nonzero eigenvalues of a subset's covariance are
    close to each other, so the bound is tight and few subsets are diagonalised; in the worst case all
    are. Ties are broken by the first subset in lexicographic order.
    """
    n, m = g.shape[0], subsets.shape[1]
    mask = torch.zeros((subsets.shape[0], n), dtype=g.dtype, device=g.device)
    mask.scatter_(1, subsets, 1.0)
    mg = mask @ g  # (B, n): sum_{j in S} g_ij
    total = (mg * mask).sum(dim=1, keepdim=True)  # sum_{i,j in S} g_ij
    dev = (g.diagonal() - 2.0 * mg / m + total / m**2).clamp(min=0.0)  # ||x_i - mean_S||^2
    dev = dev * mask
    lower = torch.maximum(dev.sum(dim=1) / (m * max(rank, 1)), dev.max(dim=1).values / m)
    order = torch.argsort(lower, stable=True)
    vals, idxs = [], []
    best, done, step = math.inf, 0, 64
    while done < order.numel() and float(lower[order[done]]) <= best * (1.0 + 1e-9):
        batch = order[done : done + step]
        lam = subset_top_eigenvalues(g, subsets[batch])
        vals.append(lam)
        idxs.append(batch)
        best = min(best, float(lam.min()))
        done += batch.numel()
        step = min(4 * step, CHUNK)
    lam, idx = torch.cat(vals), torch.cat(idxs)
    best_idx = int(idx[lam <= best * (1.0 + 1e-12)].min())
    return best_idx, best, done


class SMEA(Aggregator):
    r"""Smallest maximum eigenvalue averaging: the mean of the ``n - f`` inputs of most compact spectrum.

    .. math::

        S^\star = \operatorname*{arg\,min}_{|S| = n - f} \lambda_{\max}\left(\frac{1}{|S|} \sum_{i \in S}
        (x_i - \bar x_S)(x_i - \bar x_S)^\top\right), \qquad
        \mathrm{SMEA}(x_1, \dots, x_n) = \bar x_{S^\star}.

    Reference: Allouah, Guerraoui, Gupta, Pinot, Stephan, "On the Privacy-Robustness-Utility Trilemma in
    Distributed Learning", ICML 2023; ByzFL's ``SMEA``. Needs ``n > 2f``.

    Parameters
    ----------
    f
        Number of Byzantine inputs tolerated.
    max_subsets
        Largest number of subsets ``C(n, n - f)`` searched (default 200,000, e.g. ``n = 20, f = 8`` is
        125,970). A larger search raises :class:`ValueError` at call time; raise the limit knowingly.

    Notes
    -----
    * The search is exact: the pairwise squared distances (:func:`._linalg.pairwise_sq_distances`, one
      Gram matrix with its precision guard), then the centred ``(n-f) x (n-f)`` Gram matrices
      :math:`-\frac12 P D_{SS} P` and their largest eigenvalue (batched ``eigvalsh``), searched by
      branch and bound on a trace lower bound (:func:`search`), then one weighted sum for the output.
      ByzFL instead takes one power-iteration step from a random vector per subset, which makes its
      choice random.
    * Ties are broken by the first subset in lexicographic order.
    * (f, kappa)-resilient averaging (RESAM's definition) with :math:`\kappa = \sqrt{f / (n - 2f)}`. Proof
      (derived here from the spectral argument of the reference): for ``A`` of size ``n - f`` and
      ``T`` in ``A`` with ``|T| >= n - 2f``, projecting on :math:`u \parallel \bar x_T - \bar x_A` and
      Cauchy-Schwarz give :math:`\|\bar x_T - \bar x_A\|^2 \le \frac{|A| - |T|}{|T|} \lambda_{\max}(\Sigma_A)
      \le \frac{f}{n-2f} \lambda_{\max}(\Sigma_A)`. With ``T`` the intersection of :math:`S^\star` and an
      honest ``S`` and :math:`\lambda_{\max}(\Sigma_{S^\star}) \le \lambda_{\max}(\Sigma_S)`,
      :math:`\|\bar x_{S^\star} - \bar x_S\| \le 2 \sqrt{f / (n - 2f)}\, \lambda_{\max}(\Sigma_S)^{1/2}`, and
      :math:`\lambda_{\max}(\Sigma_S) \le \mathrm{diam}(S)^2 / 4` (Popoviciu's inequality on every
      projection).
    * ``last_info``: ``nonfinite_rows``, ``distances``, ``distance_error`` (see :mod:`._linalg`),
      ``subset`` (indices of :math:`S^\star` among the inputs),
      ``eigenvalue`` (its :math:`\lambda_{\max}`), ``subsets`` (how many there are), ``evaluated`` (how
      many were diagonalised).
    """

    name = "smea"
    requirement = "n > 2f"

    def __init__(self, f: int = 0, max_subsets: int = 200_000) -> None:
        super().__init__(f)
        self.max_subsets = check_int("max_subsets", max_subsets, low=1)

    def params(self) -> dict[str, Any]:
        return {"max_subsets": self.max_subsets}

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return 2 * f + 1

    def kappa(self, n: int, f: int | None = None, d: int | None = None) -> float | None:
        f = self.f if f is None else f
        if n <= 2 * f:
            return None
        return math.sqrt(f / (n - 2 * f))

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        self.check(x.shape[0], f)
        n0 = x.shape[0]
        count = math.comb(n0, n0 - f)
        if count > self.max_subsets:
            raise ValueError(
                f"smea would search C({n0}, {n0 - f}) = {count} subsets, more than "
                f"max_subsets={self.max_subsets}; pass a larger max_subsets or use another rule"
            )
        pw = pairwise_sq_distances(x, f, self.name)
        if pw.x.shape[0] == 0:
            raise NonFiniteInputError(f"{self.name}: every input is non-finite, none left (n=0)")
        x, f, g = pw.x, pw.f, -0.5 * pw.d2
        n, m = x.shape[0], x.shape[0] - f
        subsets = _subsets(n, m).to(g.device)
        best_idx, best_val, evaluated = search(g, subsets, rank=min(m - 1, x.shape[1]))
        chosen = subsets[best_idx]
        w = torch.zeros(n, dtype=torch.float64, device=g.device)
        w[chosen] = 1.0 / m
        self.last_info.update(pw.info())
        self.last_info.update(
            subset=pw.kept.to(chosen.device)[chosen].tolist(),
            eigenvalue=best_val,
            subsets=subsets.shape[0],
            evaluated=evaluated,
        )
        return weighted_sum(w, x)
