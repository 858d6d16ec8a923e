"""Products with a subset of the rows of an ``(n, d)`` input, without copying those rows.

The distance-based rules end with a weighted sum of some input rows (MultiKrum, MDA, MoNNA, GM, ...) or,
for NNM, a mixing matrix applied to them. Copying the rows first (``x.index_select(0, rows)``) costs a
read and a write of ``(n, d)`` values plus the page faults of a fresh CPU tensor: 3-6x a read pass
``x.sum(0)`` at ``n = 20``, ``d = 10^6``. Here:

* :func:`weighted_sum` reads only the rows with a non-zero weight, as a few matrix-vector products over
  runs of consecutive rows (a row of weight 0, or not listed, is never read: a NaN in it cannot leak).
* :func:`mix` computes ``W @ x[rows]`` with one matmul when ``rows`` is every row in order, else one
  matmul per column block of gathered rows (blocks of :data:`BLOCK` columns, cache-sized on CPU).
* :func:`empty_rows` allocates a large CPU output in memory advised for transparent huge pages
  (``madvise(MADV_HUGEPAGE)``), as PyTorch does with ``THP_MEM_ALLOC_ENABLE=1``. glibc serves blocks of
  32 MiB and more with a fresh ``mmap`` every time, whose first touch faults each 4 KiB page in: writing
  a fresh 80 MB tensor took 54 ms of CPU time against 8 ms for a reused one, and 15 ms in huge pages
  (2-core virtual machine, one thread). Smaller blocks are recycled by glibc and stay with
  :func:`torch.empty`, as does any platform without ``MADV_HUGEPAGE``.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import torch

__all__ = ["weighted_sum", "mix", "empty_rows", "HUGE_PAGE_MIN_BYTES", "BLOCK"]

#: CPU outputs of at least this many bytes go to huge-page-advised memory (0 disables it). glibc's
#: largest dynamic mmap threshold: smaller blocks come back from its heap without page faults.
HUGE_PAGE_MIN_BYTES = 32 << 20
#: Columns per gathered block in :func:`mix` on CPU (``n x BLOCK`` float32 stay in L2 for n up to ~20).
BLOCK = 1 << 13
#: Columns per gathered block on accelerators.
GPU_BLOCK = 1 << 22


def empty_rows(rows: int, d: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``(rows, d)`` tensor with ``like``'s dtype and device.

    On CPU, from :data:`HUGE_PAGE_MIN_BYTES` up, the memory is an anonymous private mapping advised for
    transparent huge pages (it is unmapped when the last tensor using it is freed; the tensor is not
    resizable). Elsewhere, or when the mapping fails, :func:`torch.empty`.
    """
    nbytes = rows * d * like.element_size()
    if like.device.type == "cpu" and 0 < HUGE_PAGE_MIN_BYTES <= nbytes and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            buf.madvise(mmap.MADV_HUGEPAGE)
            return torch.frombuffer(buf, dtype=like.dtype).view(rows, d)
        except (OSError, ValueError):
            pass
    return torch.empty((rows, d), dtype=like.dtype, device=like.device)


def _row_index(rows: torch.Tensor | Sequence[int] | None, n: int, m: int) -> list[int]:
    idx = list(range(n)) if rows is None else [int(r) for r in rows]
    if len(idx) != m or any(not 0 <= r < n for r in idx):
        raise ValueError(f"{m} weights for rows {idx} of an input with {n} rows")
    return idx


def _tracks_grad(*tensors: torch.Tensor) -> bool:
    """True when autograd records operations on one of ``tensors`` (``out=`` kernels would refuse)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def weighted_sum(
    w: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | Sequence[int] | None = None
) -> torch.Tensor:
    r"""``sum_k w_k x[rows_k]`` for weights ``(m,)`` (any float dtype; ``rows``: all rows by default).

    Weights are rounded to ``x``'s dtype; rows listed twice have their weights added first (in float64).
    Only rows with a non-zero weight are read, in runs of consecutive rows, one matrix-vector product
    each (``torch.mv``, then ``addmv_``). Result ``(d,)``, ``x``'s dtype and device. Where autograd
    tracks ``w`` or ``x``: ``w @ x[rows]`` (differentiable; a copy of the rows, every row read).
    """
    n, d = x.shape
    wv = w.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    idx = _row_index(rows, n, wv.numel())
    if _tracks_grad(w, x):
        return w.to(device=x.device, dtype=x.dtype) @ x[idx]
    per_row = torch.zeros(n, dtype=torch.float64).index_add_(0, torch.tensor(idx, dtype=torch.long), wv)
    used = per_row.nonzero().squeeze(1).tolist()
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    if not used:
        return out.zero_()
    wx = per_row.to(device=x.device, dtype=x.dtype)
    runs, start = [], used[0]
    for prev, cur in zip(used, [*used[1:], -1], strict=True):
        if cur != prev + 1:
            runs.append((start, prev + 1))
            start = cur
    torch.mv(x[runs[0][0] : runs[0][1]].T, wx[runs[0][0] : runs[0][1]], out=out)
    for a, b in runs[1:]:
        out.addmv_(x[a:b].T, wx[a:b])
    return out


def mix(w: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """``W @ x[rows]`` for a mixing matrix ``W`` ``(r, m)``: a fresh ``(r, d)`` tensor (:func:`empty_rows`).

    ``W`` is rounded to ``x``'s dtype. One matmul when ``rows`` is every row of ``x`` in order; otherwise
    the rows are gathered per column block (never all at once) and each block is one matmul. Where
    autograd tracks ``W`` or ``x``: ``W @ x[rows]`` (differentiable).
    """
    n, d = x.shape
    r, m = w.shape
    idx = _row_index(rows, n, m)
    wx = w.to(device=x.device, dtype=x.dtype)
    if _tracks_grad(w, x):
        return wx @ x[idx]
    out = empty_rows(r, d, x)
    if idx == list(range(n)):
        return torch.mm(wx, x, out=out)
    sub = torch.tensor(idx, dtype=torch.long, device=x.device)
    step = BLOCK if x.device.type == "cpu" else GPU_BLOCK
    for start in range(0, d, step):
        torch.mm(wx, x[:, start : start + step].index_select(0, sub), out=out[:, start : start + step])
    return out
