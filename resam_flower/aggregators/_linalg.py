"""Shared numerical kernels: Gram matrix, pairwise distances, non-finite screening.

Distance-based rules (Krum, MultiKrum, NNM, MDA, GM, Bulyan, ...) all start from the ``n x n`` matrix of
pairwise squared distances. It is computed once, from the Gram matrix ``G = x x^T``, in one read pass
over ``x``. ``G`` is accumulated in float64 over column blocks so that ``||x_i||^2 + ||x_j||^2 - 2 x_i.x_j``
keeps its precision when the inputs are far from the origin but close to each other (momentum vectors of
honest workers): a float32 Gram matrix would lose most digits to cancellation there.
"""

from __future__ import annotations

import torch

from .base import NonFiniteInputError

__all__ = ["gram", "sq_distances", "finite_rows", "drop_nonfinite", "weighted_sum", "BLOCK"]

#: Columns per block: ``n x BLOCK`` float64 stays in the CPU's cache for n up to a few dozens.
BLOCK = 1 << 15


def gram(x: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``x x^T`` of an ``(n, d)`` tensor, accumulated in float64, shape ``(n, n)``.

    On CUDA, or for float64 input, one matmul does it; on CPU float32 input is promoted block by block so
    that memory stays at ``O(n * BLOCK)`` beyond ``x``.
    """
    if x.dtype == torch.float64:
        return x @ x.T
    if x.device.type != "cpu":
        # Accumulating in float64 on a GPU is slow on consumer cards; TF32 is disabled by using
        # the highest matmul precision for this product only.
        return _gpu_gram(x)
    n, d = x.shape
    out = torch.zeros((n, n), dtype=torch.float64)
    for start in range(0, d, BLOCK):
        block = x[:, start : start + BLOCK].to(torch.float64)
        out.addmm_(block, block.T)
    return out


def _gpu_gram(x: torch.Tensor) -> torch.Tensor:
    n, d = x.shape
    out = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    block = 1 << 22
    for start in range(0, d, block):
        b = x[:, start : start + block].to(torch.float64)
        out.addmm_(b, b.T)
    return out


def sq_distances(g: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``(n, n)`` from a Gram matrix (clamped at 0, zero diagonal)."""
    diag = g.diagonal()
    d2 = (diag[:, None] + diag[None, :] - 2.0 * g).clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    return d2


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """Boolean ``(n,)``: rows with only finite values, found with one read pass (row sums).

    A row with a NaN or an infinity has a non-finite sum; a finite row whose sum overflows is also
    reported (its values are beyond any model's scale and would overflow any rule's arithmetic).
    """
    return torch.isfinite(x.sum(dim=1, dtype=torch.float64))


def drop_nonfinite(
    x: torch.Tensor, f: int, ok: torch.Tensor, name: str, g: torch.Tensor | None = None
) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
    """Drop the rows where ``ok`` is False; return ``(x, f - k, k, g)`` with ``g`` restricted too.

    Raises :class:`NonFiniteInputError` when ``k > f``.
    """
    k = int((~ok).sum())
    if k == 0:
        return x, f, 0, g
    if k > f:
        raise NonFiniteInputError(
            f"{name}: {k} of {x.shape[0]} inputs are non-finite, more than f={f}"
        )
    idx = ok.nonzero().squeeze(1).to(x.device)
    x = x.index_select(0, idx)
    if g is not None:
        gi = idx.to(g.device)
        g = g.index_select(0, gi).index_select(1, gi)
    return x, f - k, k, g


def weighted_sum(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i x_i`` for weights ``(n,)`` (any float dtype) in one read pass; result ``(d,)``."""
    return w.to(device=x.device, dtype=x.dtype) @ x
