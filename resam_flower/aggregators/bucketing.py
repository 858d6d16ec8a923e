"""Bucketing: shuffle the inputs and average them in buckets of size ``s``."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._linalg import drop_nonfinite
from .base import NonFiniteInputError, PreAggregator, check_int

__all__ = ["Bucketing", "SeededGenerator"]


def _canonical(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class SeededGenerator:
    """A :class:`torch.Generator` on the data's device, seeded once, whose state survives checkpoints.

    The generator is created on first use on the device of the data (randomness drawn on a CUDA tensor's
    device stays there). If a later call comes on another device, a fresh generator is seeded with the
    same ``seed`` on that device (the stream restarts). ``seed=None`` draws a seed from torch's global
    generator when the component is built, so :func:`torch.manual_seed` makes runs reproducible;
    :attr:`explicit` tells whether the seed was given (components show it in their spec only then).
    """

    def __init__(self, seed: int | None) -> None:
        self.explicit = seed is not None
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = check_int("seed", seed, low=0)
        self._gen: torch.Generator | None = None
        self._pending: tuple[str, torch.Tensor] | None = None

    def get(self, device: torch.device | str) -> torch.Generator:
        """The generator for ``device`` (created, or restored from a loaded state, on first use)."""
        device = _canonical(device)
        if self._gen is not None and _canonical(self._gen.device) == device:
            return self._gen
        gen = torch.Generator(device=device)
        if self._pending is not None and _canonical(self._pending[0]) == device:
            gen.set_state(self._pending[1])
            self._pending = None
        else:
            gen.manual_seed(self.seed)
        self._gen = gen
        return gen

    def reset(self) -> None:
        """Restart the stream from ``seed``."""
        self._gen = None
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        if self._gen is not None:
            return {"seed": self.seed, "device": str(self._gen.device), "rng_state": self._gen.get_state()}
        if self._pending is not None:
            return {"seed": self.seed, "device": self._pending[0], "rng_state": self._pending[1].clone()}
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = check_int("seed", state.get("seed", self.seed), low=0)
        self._gen = None
        self._pending = None
        if state.get("rng_state") is not None:
            self._pending = (str(state["device"]), state["rng_state"].clone())


class Bucketing(PreAggregator):
    r"""Bucketing (Karimireddy, He, Jaggi, ICLR 2022): average random buckets of ``s`` inputs.

    With a uniformly random permutation :math:`\pi` of ``[n]``,

    .. math::

        \mathrm{Bucketing}_s(x_1, \dots, x_n) = \left(\frac{1}{|B_j|}\sum_{i \in B_j} x_{\pi(i)}\right)_{j=1}
        ^{\lceil n/s \rceil}, \qquad B_j = \{(j-1)s + 1, \dots, \min(js, n)\},

    so the last bucket holds ``n mod s`` inputs when ``s`` does not divide ``n``. Output: ``ceil(n/s)``
    vectors.

    Parameters
    ----------
    f
        Number of Byzantine inputs tolerated.
    s
        Bucket size, ``s >= 1`` (``s = 1`` only shuffles).
    seed
        Seed of the permutation's :class:`torch.Generator` (``None``: drawn from torch's global generator
        at build time, and left out of :attr:`spec`). The generator lives on the input's device; its
        state (and the seed) is in :meth:`state_dict`.

    Notes
    -----
    * ``f`` is passed through unchanged, ``(n, f) -> (ceil(n/s), f)``, as ByzFL does: at most ``f``
      buckets can contain a Byzantine input. The rule after bucketing must tolerate ``f`` among
      ``ceil(n/s)`` inputs (e.g. ``n > 2 f s`` for a rule needing ``n' > 2f``), which the pipeline checks.
    * Non-finite rows are dropped before shuffling (see :mod:`.base`).
    * The buckets are formed with one matrix product ``B @ x`` with an averaging matrix ``B`` of shape
      ``(ceil(n/s), n)``: one read pass, no gathered copy of ``x``.
    * The output depends on the permutation, so it is not permutation invariant; the multiset of
      outputs is a function of the seed and the multiset of inputs only in distribution.
    * ``last_info``: ``nonfinite_rows``, ``buckets`` (list of lists of input indices after dropping).
    """

    name = "bucketing"
    requirement = "n >= 1"

    def __init__(self, f: int = 0, s: int = 1, seed: int | None = None) -> None:
        super().__init__(f)
        self.s = check_int("s", s, low=1)
        self._rng = SeededGenerator(seed)

    @property
    def seed(self) -> int:
        return self._rng.seed

    def params(self) -> dict[str, Any]:
        return {"s": self.s, "seed": self.seed} if self._rng.explicit else {"s": self.s}

    def output_shape(self, n: int, f: int) -> tuple[int, int]:
        return math.ceil(n / self.s), f

    def reset(self) -> None:
        self._rng.reset()

    def state_dict(self) -> dict[str, Any]:
        return self._rng.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._rng.load_state_dict(state)

    def _apply(self, x: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
        self.check(x.shape[0], f)
        ok = torch.isfinite(torch.linalg.vector_norm(x, dim=1))
        x, f, k, _ = drop_nonfinite(x, f, ok, self.name)
        n = x.shape[0]
        if n == 0:
            raise NonFiniteInputError(f"{self.name}: every input is non-finite, none left (n=0)")
        perm = torch.randperm(n, generator=self._rng.get(x.device), device=x.device)
        nb = math.ceil(n / self.s)
        self.last_info["nonfinite_rows"] = k
        self.last_info["buckets"] = [perm[j * self.s : (j + 1) * self.s].tolist() for j in range(nb)]
        if self.s == 1:
            return x.index_select(0, perm), f
        bucket = torch.arange(n, device=x.device) // self.s
        sizes = torch.bincount(bucket, minlength=nb).to(x.dtype)
        weights = torch.zeros((nb, n), dtype=x.dtype, device=x.device)
        weights[bucket, perm] = 1.0 / sizes[bucket]
        return weights @ x, f
