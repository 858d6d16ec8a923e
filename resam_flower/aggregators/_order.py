r"""Order-statistic kernels shared by the coordinate-wise rules (CWMed, CWTM, MeaMed).

Each coordinate-wise rule needs, per coordinate ``k``, a few sorted values ``s_(r)`` of the column
``x[:, k]`` (0-based ranks, ``s_(0) <= ... <= s_(n-1)``) and possibly the sum of a contiguous range of
ranks ``s_(lo) + ... + s_(hi-1)``. :func:`coordinatewise` computes exactly those and hands them to a small
``combine`` callback that writes the rule's output.

How (the ``"network"`` method, default)
---------------------------------------
``torch.sort``/``kthvalue``/``median`` along ``dim=0`` of an ``(n, d)`` tensor take 20-50x the time of one
read pass ``x.sum(0)`` on a CPU. Instead the columns are sorted by a *comparator network* whose
comparators are element-wise ``torch.minimum``/``torch.maximum`` of whole rows: every operation is a
vectorised, multi-threaded pass, and all columns are processed at once.

* The network is Batcher's merge-exchange sort (Knuth, TAOCP vol. 3, §5.2.2, Algorithm M), valid for
  any ``n``, ``O(n log² n)`` comparators.
* It is *pruned* backwards from what the caller needs: a comparator whose outputs are never used is
  dropped; one of which only the smaller (larger) output is used costs a single ``minimum``
  (``maximum``); comparators whose two outputs both only enter the requested *sum* are dropped too
  (``min(a, b) + max(a, b) = a + b``). For the median of 20 rows this leaves 144 row operations.
* Columns are processed in blocks of :func:`default_block` columns so that the ``n + 2`` scratch rows
  stay in the CPU's caches (blocks are large enough for torch's intra-op threads). The first
  comparators read ``x`` directly: ``x`` is read once and never written.

The results are *exact*: every requested ``s_(r)`` equals what ``torch.sort`` gives, bit for bit
(ties and ``±inf`` included). Sums are accumulated in the input dtype in rank-agnostic order, so they
match ``sort(...)[lo:hi].sum(0)`` up to rounding. Inputs must not contain NaN (the rules drop such rows
first). No autograd: results are computed under :func:`torch.no_grad`.

Peak extra memory: ``network``: the output ``(d,)`` plus ``(n + 2) x B`` scratch values (``B`` the block;
about 10 MB on CPU at ``n = 20``, float32; ``(n + 2) x 2^22`` values on a GPU). ``sort``: per block,
the sorted values plus int64 indices, ``3 x n x B`` values' worth.

The ``"sort"`` method (one ``torch.sort`` per block) computes the same thing; it is used for small
inputs, where the network's per-operation overhead dominates, and kept as a tested reference path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = ["Plan", "merge_exchange", "plan", "coordinatewise", "default_block", "dimension_factor", "METHODS"]

#: Kernel choices of :func:`coordinatewise`.
METHODS = ("auto", "network", "sort")

#: Below this many columns ``"auto"`` uses ``"sort"`` (the network's ~3 µs per row op dominates there).
SMALL_D = 4096

#: ``combine(values, partial_sum, out)``: values at the requested ranks, their range sum (or None).
Combine = Callable[[Sequence[torch.Tensor], "torch.Tensor | None", torch.Tensor], None]


def merge_exchange(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's merge-exchange sort of ``n`` keys (Algorithm M).

    Applying them in order (``min`` to ``i``, ``max`` to ``j``) sorts any input in non-decreasing order.
    """
    comps: list[tuple[int, int]] = []
    if n < 2:
        return ()
    t = (n - 1).bit_length()
    p = 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            comps.extend((i, i + d) for i in range(n - d) if i & p == r)
            if q == p:
                break
            d, q, r = q - p, q >> 1, p
        p >>= 1
    return tuple(comps)


@dataclass(frozen=True)
class Plan:
    """A pruned network with its scratch rows allocated.

    Handles ``0 .. n-1`` name the input rows, handles ``n .. n+slots-1`` scratch rows. Each op is
    ``(is_max, a, b, out)``: ``out <- max(a, b)`` if ``is_max`` else ``min(a, b)``. After the ops,
    ``exact[t]`` holds the sorted value of rank ``ranks[t]`` and the rows ``summed`` hold, in some
    order, the sorted values of ranks ``lo .. hi-1``.
    """

    n: int
    ranks: tuple[int, ...]
    lo: int
    hi: int
    ops: tuple[tuple[bool, int, int, int], ...]
    exact: tuple[int, ...]
    summed: tuple[int, ...]
    slots: int


_DEAD, _SUM, _EXACT = 0, 1, 2


@lru_cache(maxsize=512)
def plan(n: int, ranks: tuple[int, ...], lo: int = 0, hi: int = 0) -> Plan:
    """Prune :func:`merge_exchange` to produce the ranks ``ranks`` and the sum of ranks ``lo .. hi-1``."""
    if any(not 0 <= r < n for r in ranks) or not (0 <= lo <= hi <= n):
        raise ValueError(f"ranks {ranks} / range [{lo}, {hi}) out of bounds for n={n}")
    state = [_DEAD] * n
    for r in range(lo, hi):
        state[r] = _SUM
    for r in ranks:
        state[r] = _EXACT
    needed: list[tuple[int, int, bool, bool]] = []
    for i, j in reversed(merge_exchange(n)):
        si, sj = state[i], state[j]
        if si == sj and si != _EXACT:  # both unused, or both only summed: the pair's sum is invariant
            continue
        needed.append((i, j, si != _DEAD, sj != _DEAD))
        state[i] = state[j] = _EXACT
    # Forward pass: give each produced value a scratch row, reusing rows whose value is consumed.
    pos, free, slots = list(range(n)), [], 0
    ops: list[tuple[bool, int, int, int]] = []

    def fresh() -> int:
        nonlocal slots
        if free:
            return free.pop()
        slots += 1
        return n + slots - 1

    def release(h: int) -> None:
        if h >= n:
            free.append(h)

    for i, j, need_lo, need_hi in reversed(needed):
        a, b = pos[i], pos[j]
        if need_lo and need_hi:
            lo_out = fresh()  # cannot overwrite a or b: both are still read by the max
            ops.append((False, a, b, lo_out))
            hi_out = b if b >= n else fresh()
            ops.append((True, a, b, hi_out))
            release(a)
            pos[i], pos[j] = lo_out, hi_out
        else:
            keep, other = (a, b) if need_lo else (b, a)
            out = keep if keep >= n else (other if other >= n else fresh())
            ops.append((not need_lo, a, b, out))
            if other != out:
                release(other)
            pos[i if need_lo else j] = out
            pos[j if need_lo else i] = -1
    return Plan(n, ranks, lo, hi, tuple(ops), tuple(pos[r] for r in ranks),
                tuple(pos[r] for r in range(lo, hi)), slots)


def default_block(x: torch.Tensor) -> int:
    """Columns per block: on CPU about 512 KB per row (cache-resident scratch, two-thread ops)."""
    if x.device.type != "cpu":
        return 1 << 22
    return max(1 << 15, (1 << 19) // x.element_size())


def _network(x: torch.Tensor, pl: Plan, combine: Combine, out: torch.Tensor, block: int) -> None:
    n, d = x.shape
    width = min(block, d)
    scratch = torch.empty((pl.slots + 1, width), dtype=x.dtype, device=x.device)
    rows = list(scratch.unbind(0))
    fns = (torch.minimum, torch.maximum)
    for start in range(0, d, block):
        stop = min(d, start + block)
        if stop - start != width:  # last, narrower block
            rows = list(scratch[:, : stop - start].unbind(0))
        src = [*x[:, start:stop].unbind(0), *rows[:-1]]
        for is_max, a, b, o in pl.ops:
            fns[is_max](src[a], src[b], out=src[o])
        acc = None
        if pl.summed:
            acc = rows[-1]
            if len(pl.summed) == 1:
                acc.copy_(src[pl.summed[0]])
            else:
                torch.add(src[pl.summed[0]], src[pl.summed[1]], out=acc)
                for h in pl.summed[2:]:
                    acc.add_(src[h])
        combine([src[h] for h in pl.exact], acc, out[start:stop])


def _sort(x: torch.Tensor, pl: Plan, combine: Combine, out: torch.Tensor, block: int) -> None:
    d = x.shape[1]
    for start in range(0, d, block):
        stop = min(d, start + block)
        s = x[:, start:stop].sort(dim=0).values
        acc = s[pl.lo : pl.hi].sum(dim=0) if pl.hi > pl.lo else None
        combine([s[r] for r in pl.ranks], acc, out[start:stop])


@torch.no_grad()
def coordinatewise(
    x: torch.Tensor,
    ranks: Sequence[int],
    combine: Combine,
    summed: tuple[int, int] | None = None,
    *,
    method: str = "auto",
    block: int | None = None,
) -> torch.Tensor:
    """Per column of ``x`` ``(n, d)``: sorted values at ``ranks`` (+ sum of ranks ``summed=(lo, hi)``).

    ``combine(values, partial_sum, out)`` receives, for each block of columns, the ``len(ranks)``
    tensors of sorted values, the range sum (``None`` without ``summed``) and the ``out`` slice to fill;
    it must not modify its inputs' storage other than ``partial_sum``. Returns ``out`` ``(d,)`` with
    ``x``'s dtype and device. ``method``: ``"network"``, ``"sort"`` or ``"auto"`` (network unless ``d``
    is small); ``block``: columns per block (default :func:`default_block`).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n, d = x.shape
    lo, hi = summed if summed is not None else (0, 0)
    pl = plan(n, tuple(int(r) for r in ranks), lo, hi)
    block = default_block(x) if block is None else int(block)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    if d == 0:
        return out
    if method == "auto":
        method = "sort" if d < SMALL_D else "network"
    (_network if method == "network" else _sort)(x, pl, combine, out, block)
    return out


def dimension_factor(n: int, f: int, d: int | None) -> float:
    r"""``sqrt(min(d, n - f - 1))``: turns a per-coordinate constant into a vector one.

    If a rule satisfies ``|F_k - mean_S,k| <= c * Δ_k`` in each coordinate ``k``, with
    ``Δ_k = max_{i,j in S} |x_ik - x_jk|`` and ``m = |S| = n - f``, then
    ``||F - mean_S|| <= c * sqrt(Σ_k Δ_k²)``, and ``Σ_k Δ_k² <= min(d, m - 1) * D²`` with
    ``D = max_{i,j in S} ||x_i - x_j||``: trivially ``Δ_k <= D``; and a range satisfies
    ``Δ_k² <= 2 Σ_i (x_ik - x̄_k)²``, while ``Σ_i ||x_i - x̄||² = (1/2m) Σ_{i,j} ||x_i - x_j||² <=
    (m - 1) D² / 2``. ``d=None`` gives the bound valid in every dimension.
    """
    m1 = max(n - f - 1, 0)
    return math.sqrt(m1 if d is None else min(int(d), m1))
