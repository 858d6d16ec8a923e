"""Shared numerical kernels: Gram matrix, pairwise distances with a precision guard, non-finite screening.

Distance-based rules (Krum, MultiKrum, NNM, MDA, MoNNA, Bulyan, GM) all start from the ``n x n`` matrix of
pairwise squared distances ``D_ij = ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j``, computed from the Gram matrix
``G = x x^T`` in **one read pass** over ``x``. Everything after that is ``O(n^2)`` work. On x86-64 CPUs with
AVX2 or AVX-512, for float32 and float64 rows with contiguous columns and ``n <= 64``, ``G`` comes from the
fused symmetric kernel of :mod:`._gram` (the upper triangle only, partial sums in float64: faster and more
accurate than a matmul); elsewhere, or without a C compiler, from the matmul ``x @ x.T``.

Precision guard (:func:`pairwise_sq_distances`)
-----------------------------------------------
In float32, ``G`` carries an absolute error of about ``sqrt(d) * eps * (||x_i||^2 + ||x_j||^2)`` (a
probabilistic bound on float32 dot products, Higham & Mary 2019; MKL measures about 30x below it). When the
inputs are close to each other but far from the origin (momentums of honest workers, duplicated rows of a
mimic attack) that error can swamp ``D_ij``. The guard estimates, for every pair,
``psi_ij = u * (G_ii + G_jj) / max(D_ij, min(r_i, r_j))``, where ``u`` is the bound above and ``r_i`` is the
lower median squared distance of row ``i`` to the others. With ``n > 2f``, ``r_i`` of an honest row is at
most the squared diameter of the honest rows, the scale of RESAM's bound; the rules here decide at the
scale of neighbourhoods of ``n - f >= n/2`` inputs, never below it. A duplicate pair (``D_ij = 0``) is
judged against ``r``. If ``max psi_ij > rtol`` (default ``1e-2``) the Gram matrix is recomputed:

1. ``"centred"``: around a central row ``x_r`` (smallest median distance), in column blocks of
   :data:`BLOCK`: ``(x - x_r)`` in the input dtype, products accumulated across blocks in float64. Errors are
   now relative to the spread of the inputs, not to their norms (about 1.5x the cost of the fast path).
   Checked again with the block length in place of ``d``.
2. ``"exact"``: the same centred blocks promoted to float64 (about 4x the fast path); always accepted.

``last_info["distances"]`` of every rule reports the method used, ``last_info["distance_error"]`` the
estimated ``max psi``. Rows are screened on the same Gram diagonal (a row is non-finite iff its squared
norm is), so a call costs one pass over ``x`` plus whatever the rule itself needs. Dropped rows are not
copied out: :class:`Pairwise` reads the finite rows in place (:meth:`Pairwise.weighted_sum`,
:meth:`Pairwise.row`, :mod:`._rowops`) and copies them only if :attr:`Pairwise.x` is used.
The fast path is taken only when float32 matmuls run in full IEEE precision (TF32/bf16 disabled, the
PyTorch default); otherwise the first Gram matrix is computed in float64 blocks.
"""

from __future__ import annotations

import math

import torch

from . import _gram
from ._rowops import weighted_sum
from .base import NonFiniteInputError

__all__ = [
    "gram",
    "sq_distances",
    "finite_rows",
    "drop_nonfinite",
    "weighted_sum",
    "pairwise_sq_distances",
    "Pairwise",
    "central_row",
    "centred_gram",
    "BLOCK",
    "RTOL",
]

#: Columns per block of the centred/exact Gram on CPU (``n x BLOCK`` stays in cache for n up to ~64).
BLOCK = 1 << 15
#: Columns per block on accelerators (fewer, larger launches).
GPU_BLOCK = 1 << 20
#: Largest accepted estimated relative error of a squared distance before the Gram is recomputed.
RTOL = 1e-2


def _full_precision_matmul(x: torch.Tensor) -> bool:
    """True when a matmul of ``x`` with itself is computed in IEEE float32/float64 (no TF32/bf16).

    Half-precision inputs return False: their Gram matrix is computed in float64 blocks.
    """
    if x.dtype == torch.float64:
        return True
    if x.dtype != torch.float32:
        return False
    if torch.get_float32_matmul_precision() != "highest":
        return False
    if x.device.type == "cuda":
        if torch.backends.cuda.matmul.allow_tf32:
            return False
        return getattr(torch.backends.cuda.matmul, "fp32_precision", "none") in ("none", "ieee")
    if x.device.type == "cpu":
        return getattr(torch.backends.mkldnn.matmul, "fp32_precision", "none") in ("none", "ieee")
    return True


def _block(x: torch.Tensor) -> int:
    return BLOCK if x.device.type == "cpu" else GPU_BLOCK


def _blocked_gram(x: torch.Tensor, ref: int | None, work: torch.dtype) -> torch.Tensor:
    """Float64 Gram of ``x - x[ref]`` (``ref=None``: of ``x``), block products computed in ``work``."""
    n, d = x.shape
    out = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    step = _block(x)
    for start in range(0, d, step):
        b = x[:, start : start + step].to(work)
        if ref is not None:
            b = b - b[ref]
        if work == torch.float64:
            out.addmm_(b, b.T)
        else:
            out += (b @ b.T).to(torch.float64)
    return out


def _fast_gram(x: torch.Tensor, ref: int | None = None) -> torch.Tensor:
    """Float64 Gram of ``x`` (centred at row ``ref``) from products in ``x``'s dtype: the fused kernel of
    :mod:`._gram` where it runs, else matmuls (one, or per column block when centred)."""
    g = _gram.gram(x, ref)
    if g is not None:
        return g
    if ref is None:
        return (x @ x.T).to(torch.float64)
    return _blocked_gram(x, ref, x.dtype)


def gram(x: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
    """Gram matrix ``x x^T`` of an ``(n, d)`` tensor as float64, shape ``(n, n)``.

    Default: products in ``x``'s dtype, one read pass (for float32: error about ``sqrt(d) * eps32``
    relative to the squared norms; callers that difference entries should centre ``x`` first or use
    :func:`pairwise_sq_distances`). ``exact=True``: float64 products over column blocks.
    """
    if exact or not _full_precision_matmul(x):
        return _blocked_gram(x, None, torch.float64)
    return _fast_gram(x)


def sq_distances(g: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``(n, n)`` from a Gram matrix (clamped at 0, zero diagonal)."""
    diag = g.diagonal()
    d2 = (diag[:, None] + diag[None, :] - 2.0 * g).clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    return d2


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """Boolean ``(n,)``: rows with only finite values, found with one read pass (row norms, input dtype).

    A row with a NaN or an infinity has a non-finite norm; a finite row whose norm overflows the dtype is
    also reported (its values are beyond any model's scale and would overflow any rule's arithmetic).
    No copy of ``x`` is made (a float64 row sum cost a full float64 copy and ~15 read passes).
    """
    return torch.isfinite(torch.linalg.vector_norm(x, dim=1))


def _count_dropped(ok: torch.Tensor, f: int, name: str) -> int:
    """Number ``k`` of False entries of ``ok``; raises unless ``0 < n - k`` and ``k <= f``."""
    k = int((~ok).sum())
    if k > f:
        raise NonFiniteInputError(f"{name}: {k} of {ok.numel()} inputs are non-finite, more than f={f}")
    if k and k == ok.numel():
        raise NonFiniteInputError(f"{name}: all {k} inputs are non-finite (n=0 left)")
    return k


def drop_nonfinite(
    x: torch.Tensor, f: int, ok: torch.Tensor, name: str, g: torch.Tensor | None = None
) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
    """Drop the rows where ``ok`` is False; return ``(x, f - k, k, g)`` with ``g`` restricted too.

    Raises :class:`NonFiniteInputError` when ``k > f``, or when every input is non-finite (nothing is left
    to aggregate, even if ``k <= f``).
    """
    k = _count_dropped(ok, f, name)
    if k == 0:
        return x, f, 0, g
    idx = ok.nonzero().squeeze(1).to(x.device)
    x = x.index_select(0, idx)
    if g is not None:
        gi = idx.to(g.device)
        g = g.index_select(0, gi).index_select(1, gi)
    return x, f - k, k, g


class Pairwise:
    """What :func:`pairwise_sq_distances` returns: the finite rows and their squared distances.

    Row ``i`` of the finite rows is row ``kept[i]`` of the input ``source``. :attr:`x` copies the finite
    rows out of ``source`` on first use when some were dropped (``source`` itself otherwise); rules that
    only need a few rows or a weighted sum of them read ``source`` at ``kept`` instead (no copy):
    :meth:`weighted_sum`, :meth:`row`.
    """

    def __init__(
        self,
        source: torch.Tensor,
        f: int,
        dropped: int,
        kept: torch.Tensor,
        d2: torch.Tensor,
        method: str,
        error: float,
        gram: torch.Tensor,
        ref: int | None,
        x: torch.Tensor | None = None,
    ) -> None:
        self._x = x if x is not None or dropped else source
        self.source = source  #: the input, ``(n, d)``, non-finite rows included
        self.f = f  #: ``f`` minus the number of dropped rows
        self.dropped = dropped  #: number of non-finite rows dropped
        self.kept = kept  #: input indices of the finite rows (int64, on the input's device)
        self.d2 = d2  #: ``(n', n')`` float64 squared distances of the finite rows, zero diagonal
        self.method = method  #: ``"fast"``, ``"centred"`` or ``"exact"``
        self.error = error  #: estimated largest relative error of a squared distance (see module doc)
        self.gram = gram  #: the float64 Gram matrix ``d2`` comes from, of ``x - x[ref]`` (of ``x`` if no ref)
        self.ref = ref  #: the row ``gram`` is centred at, ``None`` when it is not centred

    @property
    def n(self) -> int:
        """Number of finite rows ``n'``."""
        return self.d2.shape[0]

    @property
    def x(self) -> torch.Tensor:
        """The finite rows of the input, ``(n', d)`` (a copy when rows were dropped, made once)."""
        if self._x is None:
            self._x = self.source.index_select(0, self.kept)
        return self._x

    def row(self, i: int) -> torch.Tensor:
        """Finite row ``i`` (a view of the input, no copy)."""
        return self.source[int(self.kept[i])]

    def weighted_sum(self, w: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i x_i`` over the finite rows, reading only rows of non-zero weight (no copy)."""
        return weighted_sum(w, self.source, None if not self.dropped else self.kept)

    def centred_gram(self) -> torch.Tensor:
        """The Gram matrix of ``x - x_r`` for a central row ``r``, from :attr:`gram` without a pass.

        Centring an uncentred Gram matrix algebraically, ``G_ij - G_ir - G_jr + G_rr``, keeps each
        entry's error linear in the norm of a far row (a distance carries its square).
        """
        if self.ref is not None:
            return self.gram
        g, r = self.gram, central_row(self.d2)
        return g - g[:, r : r + 1] - g[r : r + 1, :] + g[r, r]

    def info(self) -> dict[str, object]:
        """Diagnostics for ``last_info``."""
        return {"nonfinite_rows": self.dropped, "distances": self.method, "distance_error": self.error}


def _row_scale(d2: torch.Tensor) -> torch.Tensor:
    """Lower median of each row's squared distances to the other rows, ``(n,)``."""
    n = d2.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=d2.dtype, device=d2.device)
    off = d2 + torch.diag(torch.full((n,), math.inf, dtype=d2.dtype, device=d2.device))
    return off.sort(dim=1).values[:, (n - 2) // 2]


def _error_estimate(g: torch.Tensor, d2: torch.Tensor, u: float) -> float:
    """``max_ij u (G_ii + G_jj) / max(D_ij, min(r_i, r_j))`` over ``i != j`` (0 for a single row)."""
    n = d2.shape[0]
    if n < 2:
        return 0.0
    g, d2 = g.detach(), d2.detach()  # a bound on rounding, not part of the result: no gradient through it
    if not bool(torch.isfinite(d2).all()):
        return math.inf
    diag = g.diagonal()
    r = _row_scale(d2)
    denom = torch.maximum(d2, torch.minimum(r[:, None], r[None, :]))
    err = u * (diag[:, None] + diag[None, :])
    ratio = torch.where(denom > 0, err / denom.clamp(min=torch.finfo(denom.dtype).tiny), err * math.inf)
    ratio.fill_diagonal_(0.0)
    ratio = torch.nan_to_num(ratio, nan=0.0)  # err = 0 and denom = 0: exact zeros (all rows 0)
    return float(ratio.max())


def central_row(d2: torch.Tensor) -> int:
    """Index of the row with the smallest median squared distance to the others (honest if ``n > 2f``)."""
    return int(_row_scale(d2).argmin())


def centred_gram(x: torch.Tensor, ref: int) -> torch.Tensor:
    """Float64 Gram matrix of ``x - x[ref]``, products in float64 over column blocks: ``(n, n)``.

    Each entry is accurate relative to ``||x_i - x_ref|| * ||x_j - x_ref||``: the inner products between
    near and far inputs survive, which a distance matrix cannot give back (see :mod:`.geometric_median`).
    """
    return _blocked_gram(x, ref, torch.float64)


def pairwise_sq_distances(x: torch.Tensor, f: int, name: str, *, rtol: float = RTOL) -> Pairwise:
    """Drop non-finite rows and return the squared distances of the rest, with the precision guard.

    One read pass over ``x`` in the common case (the Gram matrix); its diagonal (squared norms) also
    screens the rows: a row is non-finite iff its squared norm is. Raises :class:`NonFiniteInputError`
    when more than ``f`` rows are non-finite. See the module docstring for the guard.
    """
    n, d = x.shape
    eps = torch.finfo(x.dtype).eps
    eps64 = torch.finfo(torch.float64).eps
    fast = _full_precision_matmul(x)
    g = _fast_gram(x) if fast else _blocked_gram(x, None, torch.float64)
    ok = torch.isfinite(g.diagonal())
    if fast:  # in the dtype's own arithmetic a squared norm beyond its range is non-finite, whether the
        # products overflowed (matmul) or their float64 sums hid it (fused kernel)
        ok &= g.diagonal() <= torch.finfo(x.dtype).max
    k = _count_dropped(ok, f, name)
    f -= k
    kept = torch.arange(n, device=x.device)
    if k:  # the rows themselves are not copied here (see Pairwise.x)
        kept = kept[ok.to(kept.device)]
        gi = kept.to(g.device)
        g = g.index_select(0, gi).index_select(1, gi)
    d2 = sq_distances(g)
    method = "fast" if fast else "exact"
    error = _error_estimate(g, d2, math.sqrt(d) * (eps if fast else eps64))
    if error <= rtol:
        return Pairwise(x, f, k, kept, d2, method, error, g, None)
    source, x = x, Pairwise(x, f, k, kept, d2, method, error, g, None).x  # the guard reads the finite rows
    ref = central_row(d2)
    if fast and x.dtype != torch.float64:
        g = _fast_gram(x, ref)
        d2 = sq_distances(g)
        error = _error_estimate(g, d2, math.sqrt(min(d, _block(x))) * eps)
        if error <= rtol:
            return Pairwise(source, f, k, kept, d2, "centred", error, g, ref, x)
    g = _blocked_gram(x, ref, torch.float64)
    d2 = sq_distances(g)
    error = _error_estimate(g, d2, math.sqrt(d) * eps64)
    return Pairwise(source, f, k, kept, d2, "exact", error, g, ref, x)
