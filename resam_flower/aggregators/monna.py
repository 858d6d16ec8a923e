"""MoNNA (Farhadkhani et al., ICML 2023): average of the nearest neighbours of one trusted input."""

from __future__ import annotations

import torch

from ._linalg import pairwise_sq_distances, weighted_sum
from .base import Aggregator, NonFiniteInputError, check_int

__all__ = ["MoNNA"]

_NEEDS_TRUST = (
    "monna averages the inputs nearest to one vector it trusts to be honest, so it must be told which: "
    "trusted=<vector> (the server's own vector, e.g. a momentum it computed on its own data) or "
    "idx=<position> of an input known to be honest (a worker's own vector in peer-to-peer learning). "
    "Replies from a federation's nodes are all untrusted, and a server sorts them by node id: with "
    "idx=0 the node with the lowest id, Byzantine or not, would steer the model. Use another rule "
    "(e.g. nnm+cwtm) otherwise"
)


class MoNNA(Aggregator):
    r"""MoNNA: the average of the ``n - f`` nearest neighbours of a trusted input, itself included.

    .. math::
        \mathrm{MoNNA}(x_1..x_n) = \frac{1}{n - f} \sum_{j \in N_{\mathrm{idx}}} x_j

    :math:`N_{\mathrm{idx}}` holds the ``n - f`` inputs closest to :math:`x_{\mathrm{idx}}`, itself first
    (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot & Stephan, "Robust collaborative learning with linear
    gradient overhead", ICML 2023; ByzFL's ``MoNNA``). The rule is only as good as that trust, so it is
    never implicit; give exactly one of:

    * ``idx``: the position of an honest input, as in peer-to-peer learning where it is the worker's own
      vector. It always refers to the position in the input; other non-finite rows are dropped first, a
      non-finite trusted row raises :class:`NonFiniteInputError`. Needs ``n > 2f`` and ``idx < n``.
    * ``trusted``: a vector from outside the inputs (a server's own vector). It counts as one more, honest,
      input: the result is MoNNA with ``idx=0`` on ``[trusted; x_1..x_n]``, the average of ``trusted`` and
      its ``n - f`` nearest inputs. Needs ``n + 1 > 2f``. :meth:`set_trusted` replaces it between calls.

    Without either it raises :class:`ValueError` saying why: a server that sorts untrusted replies (by
    node id, as ``ResilientAveraging`` does) would otherwise hand the choice to one of its nodes.

    Cost: one Gram matrix plus one weighted sum. ``kappa`` is ``None`` (no bound in RESAM's definition
    that we could verify). ``last_info``: ``selected`` (sorted input indices averaged, the trusted vector
    not counted), distance diagnostics.

    Parameters
    ----------
    f
        Number of Byzantine inputs to tolerate.
    idx
        Position of the trusted input among the inputs.
    trusted
        A trusted vector of the inputs' dimension, outside the inputs.
    """

    name = "monna"
    requirement = "n > 2f (idx) or n + 1 > 2f (trusted vector)"

    def __init__(self, f: int = 0, idx: int | None = None, trusted: torch.Tensor | None = None) -> None:
        super().__init__(f)
        self.idx: int | None = None
        self.trusted: torch.Tensor | None = None
        if (idx is None) == (trusted is None):
            raise ValueError(f"{_NEEDS_TRUST}; got {'neither' if idx is None else 'both idx and trusted'}")
        if idx is not None:
            self.idx = check_int("idx", idx, low=0)
        if trusted is not None:
            self.set_trusted(trusted)

    def set_trusted(self, vector: torch.Tensor) -> None:
        """Use ``vector`` (finite, one-dimensional) as the trusted input from the next call on."""
        if self.idx is not None:
            raise ValueError(
                f"{self.name}: built with idx={self.idx}; a trusted vector needs MoNNA(f, trusted=...)"
            )
        if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or not vector.is_floating_point():
            raise ValueError(
                f"{self.name}: trusted must be a 1-D floating-point tensor, got {_describe(vector)}"
            )
        if not bool(torch.isfinite(vector).all()):
            raise NonFiniteInputError(f"{self.name}: the trusted vector is non-finite")
        self.trusted = vector.detach()

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        if self.idx is None:
            return max(2 * f, 1)
        return max(2 * f + 1, self.idx + 1)

    def params(self) -> dict[str, object]:
        return {"idx": self.idx} if self.idx is not None else {"trusted": "vector"}

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        n = x.shape[0]
        if self.idx is None:
            assert self.trusted is not None  # set in __init__, only replaced by another vector
            self.check(n, f)
            t = self.trusted
            if t.shape[0] != x.shape[1]:
                raise ValueError(
                    f"{self.name}: trusted vector of dimension {t.shape[0]}, inputs of {x.shape[1]}"
                )
            x = torch.cat([t.to(device=x.device, dtype=x.dtype).unsqueeze(0), x])
            out = self._around(x, f, 0)
            self.last_info["selected"] = [j - 1 for j in self.last_info["selected"] if j > 0]
            return out
        if self.idx >= n:
            raise ValueError(f"{self.name}: idx={self.idx} must be < n={n}")
        self.check(n, f)
        return self._around(x, f, self.idx)

    def _around(self, x: torch.Tensor, f: int, idx: int) -> torch.Tensor:
        """The mean of the ``len(x) - f`` rows nearest to row ``idx`` (after dropping non-finite rows)."""
        p = pairwise_sq_distances(x, f, self.name)
        self.last_info.update(p.info())
        where = (p.kept == idx).nonzero()
        if where.numel() == 0:
            raise NonFiniteInputError(f"{self.name}: the trusted input idx={idx} is non-finite")
        i = int(where[0, 0])
        m = p.x.shape[0] - p.f
        row = p.d2[i].clone()
        row[i] = -1.0  # the trusted input is always among its own neighbours
        nbrs = row.topk(m, largest=False).indices
        w = torch.zeros(p.x.shape[0], dtype=torch.float64, device=p.d2.device)
        w[nbrs] = 1.0 / m
        self.last_info["selected"] = sorted(int(j) for j in p.kept[nbrs.to(p.kept.device)])
        return weighted_sum(w, p.x)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
