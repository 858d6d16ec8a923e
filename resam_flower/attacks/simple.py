"""Attacks with a closed form and no tuning: sign flipping, infinity, Gaussian noise, mimic."""

from __future__ import annotations

from typing import Any

import torch

from ..aggregators._linalg import gram
from .base import Attack, check_float, check_int, honest_mean, replicate

__all__ = ["SignFlipping", "Infinity", "Gaussian", "Mimic"]


class SignFlipping(Attack):
    r"""Sign flipping: every Byzantine worker sends :math:`-\mu`.

    :math:`\mathrm{SF}(x_1, \dots, x_h) = -\frac{1}{h}\sum_i x_i` (Allen-Zhu et al., ICLR 2021). Not
    omniscient in the strong sense: a Byzantine node can run it alone on its own vector (``-own``).
    """

    name = "sf"
    needs_honest = False

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        return replicate(-honest_mean(honest), f)


class Infinity(Attack):
    r"""Every Byzantine worker sends :math:`+\infty` in every coordinate.

    Harmless to any rule that screens non-finite rows (see :mod:`resam_flower.aggregators.base`), fatal to
    plain averaging. Needs only the dimension ``d`` (an ``(0, d)`` input is accepted).
    """

    name = "inf"
    needs_honest = False

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        return torch.full((f, honest.shape[1]), float("inf"), dtype=honest.dtype, device=honest.device)


_GOLDEN = 0x9E3779B97F4A7C15


class Gaussian(Attack):
    r"""Gaussian noise around the honest mean: :math:`b_j \sim \mathcal{N}(\mu, \sigma^2 I)`, independently.

    Each of the ``f`` Byzantine workers draws its own sample. Run by a Byzantine node alone, the noise is
    centred on the node's own vector. Draws come from a :class:`torch.Generator` on the input's device,
    seeded from ``(seed, number of previous calls)``: the sequence is reproducible and resumes exactly from
    :meth:`state_dict` (the same seed gives different, equally reproducible, draws on CPU and CUDA).

    ByzFL's ``Gaussian`` draws around a fixed scalar ``mu`` (default 0); this one is centred on the honest
    mean (``N(mu, sigma^2 I)`` with ``mu`` the honest mean), so that it stays a small perturbation of the
    honest cloud rather than a vector any rule can spot.

    Parameters
    ----------
    sigma : float (default: 1.0)
        Standard deviation per coordinate, ``>= 0``.
    seed : int (default: 0)
        Seed of the noise; a Byzantine client should derive it from its node id and the round.
    """

    name = "gaussian"
    needs_honest = False
    param_aliases = {"std": "sigma", "scale": "sigma"}

    def __init__(self, f: int = 1, sigma: float = 1.0, seed: int = 0) -> None:
        super().__init__(f)
        self.sigma = check_float("sigma", sigma, low=0.0)
        self.seed = check_int("seed", seed, low=0)
        self._calls = 0

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        g = torch.Generator(device=honest.device)
        g.manual_seed((self.seed * _GOLDEN + self._calls) % (1 << 63))
        self._calls += 1
        noise = torch.randn((f, honest.shape[1]), generator=g, dtype=honest.dtype, device=honest.device)
        return noise.mul_(self.sigma).add_(honest_mean(honest))

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "seed": self.seed}

    def reset(self) -> None:
        self._calls = 0

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self._calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._calls = int(state.get("calls", 0))


MAX_VARIANCE = "max-variance"


class Mimic(Attack):
    r"""Mimic: every Byzantine worker copies the vector of one honest worker :math:`x_{i^*}`.

    Karimireddy, He & Jaggi, "Byzantine-robust learning on heterogeneous datasets via bucketing",
    ICLR 2022. On heterogeneous data, over-representing one worker biases the aggregate towards its
    data while no robust rule can tell the copies from honest vectors.

    Parameters
    ----------
    target : int or "max-variance" (default: 0)
        Index (in the honest input, ``0 <= target < h``) of the worker to copy, or ``"max-variance"``:
        the worker farthest from the mean along the honest vectors' top principal direction,
        :math:`i^* = \arg\max_i |\langle z, x_i - \mu\rangle|` with :math:`z` the top eigenvector of
        :math:`\sum_i (x_i - \mu)(x_i - \mu)^\top`. It is computed exactly from the ``h x h`` Gram matrix
        of the centred vectors (cost ``O(h^2 d)``, no ``d x d`` matrix) and re-chosen on every call;
        Karimireddy et al. estimate ``z`` online by power iteration during warm-up rounds and then keep
        ``i*`` fixed (here the honest order may change between rounds, so the choice is per call).
        ``last_info["target"]`` reports the index used.
    """

    name = "mimic"
    param_aliases = {"epsilon": "target"}  # ByzFL's name

    def __init__(self, f: int = 1, target: int | str = 0) -> None:
        super().__init__(f)
        if isinstance(target, str):
            if target.strip().lower().replace("_", "-") != MAX_VARIANCE:
                raise ValueError(f"mimic target must be an index >= 0 or {MAX_VARIANCE!r}, got {target!r}")
            self.target: int | str = MAX_VARIANCE
        else:
            self.target = check_int("target", target, low=0)

    def _choose(self, honest: torch.Tensor) -> int:
        h = honest.shape[0]
        if self.target != MAX_VARIANCE:
            if self.target >= h:
                raise ValueError(f"mimic target must be < h (number of honest vectors), got target="
                                 f"{self.target} with h={h}")
            return int(self.target)
        if h == 1:
            return 0
        centred = honest - honest_mean(honest)
        _, vecs = torch.linalg.eigh(gram(centred))  # ascending eigenvalues; (h, h) float64
        # Projection of x_i - mu on the top principal direction is proportional to u_i.
        return int(vecs[:, -1].abs().argmax())

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        i = self._choose(honest)
        self.last_info["target"] = i
        return replicate(honest[i], f)

    def params(self) -> dict[str, Any]:
        return {"target": self.target}
