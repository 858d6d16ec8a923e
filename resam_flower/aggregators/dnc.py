"""Divide-and-conquer (DnC), Shejwalkar & Houmansadr, NDSS 2021: spectral outlier removal on subsamples."""

from __future__ import annotations

from typing import Any

import torch

from ._linalg import drop_nonfinite, weighted_sum
from .base import Aggregator, NonFiniteInputError, check_float, check_int
from .bucketing import SeededGenerator

__all__ = ["DnC", "outlier_scores", "sample_coordinates"]


def sample_coordinates(d: int, b: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``b`` distinct coordinates of ``range(d)``, uniformly at random, sorted (``O(b log b)``, small ``b``).

    For ``b <= d / 4``: draw with replacement, deduplicate (the distinct set of a symmetric draw is a
    uniformly random subset given its size), top up until ``b`` are distinct, then keep a uniformly random
    ``b`` of them. Otherwise the first ``b`` of a random permutation of ``range(d)``.
    """
    if 4 * b > d:
        return torch.randperm(d, generator=gen, device=device)[:b].sort().values
    picked = torch.empty(0, dtype=torch.long, device=device)
    while picked.numel() < b:
        draw = torch.randint(d, (b - picked.numel() + 16,), generator=gen, device=device)
        picked = torch.unique(torch.cat([picked, draw]))
    if picked.numel() > b:
        choose = torch.randperm(picked.numel(), generator=gen, device=device)[:b]
        picked = picked[choose].sort().values
    return picked


def outlier_scores(sub: torch.Tensor) -> torch.Tensor:
    r"""DnC's scores :math:`s_i = \langle y_i - \bar y, v\rangle^2`, ``v`` the top right singular vector.

    ``sub`` is ``(n, b)``. With :math:`Y` the centred rows and :math:`K = Y Y^\top = U \Lambda U^\top`,
    the top right singular vector is :math:`v = Y^\top u_1 / \sqrt{\lambda_1}`, so
    :math:`s_i = (Y v)_i^2 = \lambda_1 u_{1,i}^2`: one ``n x n`` eigenproblem in float64, any ``b``.
    """
    y = sub.to(torch.float64)
    y = y - y.mean(dim=0, keepdim=True)
    evals, evecs = torch.linalg.eigh(y @ y.T)
    return evals[-1].clamp(min=0.0) * evecs[:, -1].square()


class DnC(Aggregator):
    r"""DnC: repeatedly project centred random coordinate subsamples on their top singular vector.

    For ``t = 1..T``: draw ``b`` coordinates uniformly without replacement, centre the subsampled inputs
    :math:`y_i`, take the top right singular vector :math:`v` of the centred matrix, score
    :math:`s_i = \langle y_i - \bar y, v\rangle^2` and keep the :math:`n - \lfloor c f\rfloor` inputs of
    lowest score. The output is the mean of the inputs kept in every iteration (Shejwalkar & Houmansadr,
    "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated Learning",
    NDSS 2021, Algorithm 2; defaults from Blades' ``DnC``).

    Parameters
    ----------
    f
        Number of Byzantine inputs tolerated.
    sub_dim
        Coordinates per subsample ``b >= 1`` (default 10,000). With ``b >= d`` all coordinates are used
        and one iteration is computed (they would all be equal).
    iterations
        Number of subsamples ``T >= 1`` (default 5).
    c
        Filtering fraction ``c >= 0``: each iteration removes :math:`\lfloor c f \rfloor` inputs
        (default 1.0).
    seed
        Seed of the coordinate sampling's :class:`torch.Generator` (``None``: drawn from torch's global
        generator at build time, and left out of :attr:`spec`); the generator lives on the input's
        device, its state (and the seed) is in :meth:`state_dict`.

    Notes
    -----
    * Needs ``n > 2f`` (an honest majority, as the reference assumes) and ``n > floor(c f)`` (every
      iteration keeps an input).
    * If the kept sets have an empty intersection (possible when ``T * floor(c f) >= n``), the inputs kept
      in the largest number of iterations are averaged.
    * Cost: ``T`` gathers of ``n x b`` values, ``T`` eigenproblems of size ``n``, one row-sum pass to screen
      non-finite rows and one weighted sum for the output. Ties in scores keep the lower index.
    * No (f, kappa) resilient-averaging constant is proven: :meth:`kappa` returns ``None``.
    * ``last_info``: ``nonfinite_rows``, ``kept`` (indices averaged, after dropping), ``removed``.
    """

    name = "dnc"

    def __init__(
        self,
        f: int = 0,
        sub_dim: int = 10_000,
        iterations: int = 5,
        c: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(f)
        self.sub_dim = check_int("sub_dim", sub_dim, low=1)
        self.iterations = check_int("iterations", iterations, low=1)
        self.c = check_float("c", c, low=0.0)
        self._rng = SeededGenerator(seed)

    @property
    def requirement(self) -> str:  # type: ignore[override]
        return "n > max(2f, floor(c f))"

    @property
    def seed(self) -> int:
        return self._rng.seed

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"sub_dim": self.sub_dim, "iterations": self.iterations, "c": self.c}
        if self._rng.explicit:
            p["seed"] = self.seed
        return p

    def removed_count(self, f: int) -> int:
        """Inputs removed per iteration, :math:`\\lfloor c f \\rfloor`."""
        return int(self.c * f)

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        return max(2 * f, self.removed_count(f)) + 1

    def reset(self) -> None:
        self._rng.reset()

    def state_dict(self) -> dict[str, Any]:
        return self._rng.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._rng.load_state_dict(state)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        self.check(x.shape[0], f)
        ok = torch.isfinite(torch.linalg.vector_norm(x, dim=1))
        x, f, k, _ = drop_nonfinite(x, f, ok, self.name)
        n, d = x.shape
        if n == 0:
            raise NonFiniteInputError(f"{self.name}: every input is non-finite, none left (n=0)")
        keep = n - self.removed_count(f)
        counts = torch.zeros(n, dtype=torch.long, device=x.device)
        full = self.sub_dim >= d
        iterations = 1 if full else self.iterations
        for _ in range(iterations):
            if full:
                sub = x
            else:
                cols = sample_coordinates(d, self.sub_dim, self._rng.get(x.device), x.device)
                sub = x.index_select(1, cols)
            scores = outlier_scores(sub)
            good = torch.argsort(scores, stable=True)[:keep]
            counts[good] += 1
        kept = counts == counts.max()
        w = kept.to(torch.float64) / kept.sum()
        self.last_info.update(
            nonfinite_rows=k,
            kept=kept.nonzero().squeeze(1).tolist(),
            removed=(~kept).nonzero().squeeze(1).tolist(),
        )
        return weighted_sum(w, x)
