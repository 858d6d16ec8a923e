"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021): a stateful, iterative clipped average."""

from __future__ import annotations

from typing import Any

import torch

from ._linalg import BLOCK, drop_nonfinite
from .base import Aggregator, NonFiniteInputError, check_float, check_int

__all__ = ["CenteredClipping"]

#: From this many iterations on, the iterations run in coefficient space on an n x n Gram matrix (one
#: Gram pass) instead of two read passes each (measured crossover on CPU at n = 20).
GRAM_FROM = 5
_GPU_BLOCK = 1 << 22
#: Columns per block of :func:`shifted_sq_norms` on CPU: few blocks (each op is a thread barrier), and the
#: ``n x block`` difference still in cache for n up to ~20.
_NORM_BLOCK = 1 << 17


def _block(x: torch.Tensor, cpu: int = BLOCK) -> int:
    return cpu if x.device.type == "cpu" else _GPU_BLOCK


def shifted_sq_norms(x: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """``||x_i - v||^2`` (``v = None``: 0) for every row as float64, one read pass over column blocks.

    Each block's norms are computed in the input dtype (relative error about ``eps * sqrt(block)``, no
    cancellation since the differences are formed first) and summed in float64. A block whose squared
    norm overflows the input dtype gives ``inf``: that row counts as non-finite (see :mod:`.base`).
    """
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    step = _block(x, _NORM_BLOCK)
    for start in range(0, x.shape[1], step):
        diff = x[:, start : start + step]
        if v is not None:
            diff = diff - v[start : start + step]
        out += torch.linalg.vector_norm(diff, dim=1).to(torch.float64).square()
    return out


def shifted_gram(x: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """Gram matrix of the rows ``x_i - v`` (``v = None``: of ``x``), float64 products, one read pass."""
    n, step = x.shape[0], _block(x)
    out = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], step):
        diff = x[:, start : start + step]
        if v is not None:
            diff = diff - v[start : start + step]
        diff = diff.to(torch.float64)
        out.addmm_(diff, diff.T)
    return out


class CenteredClipping(Aggregator):
    r"""Centered clipping: clipped steps from the previous aggregate towards the inputs.

    .. math::

        v_{l+1} = v_l + \frac{1}{n} \sum_{i=1}^n (x_i - v_l)\,\min\left(1, \frac{\tau}{\|x_i - v_l\|_2}
        \right), \quad l = 0, \dots, L-1, \qquad \mathrm{CC}(x_1, \dots, x_n) = v_L.

    :math:`v_0` is the aggregate this instance returned at its previous call (Karimireddy, He, Jaggi,
    "Learning from History for Byzantine Robust Optimization", ICML 2021, Algorithm 2; ByzFL's
    ``CenteredClipping``). At the first call (and after :meth:`reset`), :math:`v_0 = 0` as in ByzFL.

    Parameters
    ----------
    f
        Number of Byzantine inputs tolerated (the rule itself does not use it; it bounds how many
        non-finite rows may be dropped).
    tau
        Clipping radius :math:`\tau > 0` (ByzFL's default 100.0). The paper's analysis takes
        :math:`\tau` of the order of the honest inputs' spread around the previous aggregate.
    iterations
        Number of clipping iterations :math:`L \ge 1` (default 1, as in ByzFL and the paper's experiments).

    Notes
    -----
    * Cost: :math:`v_{l+1} = (1 - \bar w) v_l + \frac1n \sum_i w_i x_i` with :math:`w_i` the clipping
      factors, so an iteration is two read passes (the norms ``||x_i - v_l||`` over column blocks,
      see :func:`shifted_sq_norms`, then one matrix-vector product); no ``(n, d)`` temporary. From
      ``L = 5`` on (:data:`GRAM_FROM`), all iterations run in coefficient space instead: every
      :math:`v_l - v_0` lies in the span of the rows :math:`x_i - v_0`, so the norms follow from one
      Gram matrix of those rows with float64 products (no loss to cancellation when :math:`v_l` moves
      far from :math:`v_0`), and the output costs one more pass.
    * State: :math:`v` (a tensor of shape ``(d,)``) is in :meth:`state_dict`, so a run resumed from a
      checkpoint continues identically. It follows the input's device and dtype; an input of another
      dimension raises :class:`ValueError` (call :meth:`reset` when the model changes).
    * Non-finite rows are dropped (see :mod:`.base`); the state is only updated by successful calls.
    * No (f, kappa) resilient-averaging constant holds without assumptions on :math:`v_0` and
      :math:`\tau`: :meth:`kappa` returns ``None``.
    * ``last_info``: ``nonfinite_rows``, ``clipped`` (rows clipped at the last iteration),
      ``step_norm`` (``||v_L - v_0||``).
    """

    name = "cc"
    requirement = "n >= 1"

    def __init__(self, f: int = 0, tau: float = 100.0, iterations: int = 1) -> None:
        super().__init__(f)
        self.tau = check_float("tau", tau, low=0.0, low_open=True)
        self.iterations = check_int("iterations", iterations, low=1)
        self.v: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"tau": self.tau, "iterations": self.iterations}

    def reset(self) -> None:
        self.v = None

    def state_dict(self) -> dict[str, Any]:
        return {"v": None if self.v is None else self.v.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        v = state.get("v")
        if v is not None and (not isinstance(v, torch.Tensor) or v.ndim != 1):
            raise ValueError(f"cc state 'v' must be a 1-D tensor, got {type(v).__name__}")
        self.v = None if v is None else v.detach().clone()

    def _start(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.v is None:
            return None
        if self.v.shape[0] != x.shape[1]:
            raise ValueError(
                f"cc state has dimension {self.v.shape[0]} but inputs have d={x.shape[1]}; call reset()"
            )
        return self.v.to(device=x.device, dtype=x.dtype)

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        self.check(x.shape[0], f)
        v0 = self._start(x)
        if self.iterations >= GRAM_FROM:
            k0 = shifted_gram(x, v0)
            x, f, k, k0 = drop_nonfinite(x, f, torch.isfinite(k0.diagonal()), self.name, g=k0)
            self._nonempty(x)
            out = self._iterate_gram(x, v0, k0)
        else:
            sq = shifted_sq_norms(x, v0)
            ok = torch.isfinite(sq)
            x, f, k, _ = drop_nonfinite(x, f, ok, self.name)
            self._nonempty(x)
            out = self._iterate_direct(x, v0, sq[ok] if k else sq)
        self.last_info["nonfinite_rows"] = k
        step = (out if v0 is None else out - v0).detach()
        self.last_info["step_norm"] = float(torch.linalg.vector_norm(step))
        self.v = out.detach().clone()
        return out

    def _nonempty(self, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            raise NonFiniteInputError(f"{self.name}: every input is non-finite, none left (n=0)")

    def _weights(self, sq: torch.Tensor) -> torch.Tensor:
        norms = sq.clamp(min=0.0).sqrt()
        w = torch.where(norms > self.tau, self.tau / norms, torch.ones_like(norms))
        self.last_info["clipped"] = int((norms > self.tau).sum())
        return w

    def _iterate_direct(self, x: torch.Tensor, v: torch.Tensor | None, sq: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        for it in range(self.iterations):
            if it > 0:
                sq = shifted_sq_norms(x, v)
            w = self._weights(sq) / n
            step = (w.to(x.dtype) @ x)
            v = step if v is None else step.add_(v, alpha=float(1.0 - w.sum()))
        return v

    def _iterate_gram(self, x: torch.Tensor, v0: torch.Tensor | None, k0: torch.Tensor) -> torch.Tensor:
        # v_l = v0 + sum_j c_j (x_j - v0); ||x_i - v_l||^2 = K_ii - 2 (K c)_i + c^T K c, K = Gram(x - v0).
        n = x.shape[0]
        c = torch.zeros(n, dtype=torch.float64, device=k0.device)
        for _ in range(self.iterations):
            kc = k0 @ c
            sq = k0.diagonal() - 2.0 * kc + c @ kc
            w = self._weights(sq) / n
            c = c * (1.0 - w.sum()) + w
        out = c.to(x.dtype) @ x
        if v0 is not None:
            out.add_(v0, alpha=float(1.0 - c.sum()))
        return out
