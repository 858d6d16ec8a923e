r"""Order-statistic kernels shared by the coordinate-wise rules (CWMed, CWTM, MeaMed).

Each coordinate-wise rule needs, per coordinate ``k``, a few sorted values ``s_(r)`` of the column
``x[:, k]`` (0-based ranks, ``s_(0) <= ... <= s_(n-1)``) and possibly the sum of a contiguous range of
ranks ``s_(lo) + ... + s_(hi-1)``. :func:`coordinatewise` computes exactly those and hands them to a small
``combine`` callback that writes the rule's output.

How (the ``"network"`` method, default)
---------------------------------------
``torch.sort``/``kthvalue``/``median`` along ``dim=0`` of an ``(n, d)`` tensor take 20-50x the time of one
read pass ``x.sum(0)`` on a CPU. Instead the columns are sorted by a *comparator network* whose
comparators are element-wise ``min``/``max`` of whole rows, so all columns are processed at once.

* The network is Batcher's merge-exchange sort (Knuth, TAOCP vol. 3, §5.2.2, Algorithm M), valid for
  any ``n``, ``O(n log² n)`` comparators in ``O(log² n)`` layers of disjoint comparators.
* It is *pruned* backwards from what the caller needs: a comparator whose outputs are never used is
  dropped; one of which only the smaller (larger) output is used becomes a lone ``min`` (``max``);
  comparators whose two outputs both only enter the requested *sum* are dropped too
  (``min(a, b) + max(a, b) = a + b``).
* Each comparator is one or two element-wise calls, ``torch.minimum(a, b, out=t)`` and
  ``torch.maximum(a, b, out=...)``, on the rows of a block of columns. Results go to scratch rows with
  register-like renaming (no copies): the first comparators read ``x`` itself, which is read once and
  never written; the last write of each requested rank goes to that rank's output row, so the rule
  sees an ``(n, B)`` view; a rank range is summed row by row, in rank order (one call on the
  ``(hi - lo, B)`` rows would exceed torch's 32768-element grain and fork OpenMP threads inside the
  worker threads: oversubscribed, and very slow when other processes compete for the cores; callbacks
  should likewise stick to single-row calls). For the median of 20 rows the pruned
  plan has 144 such calls per block.
* Columns are processed in blocks of :func:`default_block` columns (128 KB rows on CPU, so that each
  call stays single-threaded and the scratch rows stay in cache). On CPU,
  ``torch.get_num_threads()`` Python threads take blocks in turn (torch releases the GIL inside each
  call). This avoids one OpenMP fork/join per call: with multi-threaded calls on larger blocks the
  kernel was somewhat faster on an idle 2-core machine (about 4x a read pass instead of 5-6x) but up
  to 30x slower when other processes competed for the cores (as Ray workers do in a simulation).
  Other devices run the same plan on larger blocks, from one thread.

The ``"fused"`` path (CPU, float32/float64; the default wherever it can run)
-------------------------------------------------------------------------------
A rule that passes ``fused=`` (CWMed, CWTM, MeaMed, Bulyan's coordinate phase) gets the same network and
its last step compiled into one C loop over columns (:mod:`._fused`): the network in vector registers,
every input value read once, about 1-2x a read pass instead of 5-10x. It computes the same operations in
the same order as the torch path, so the results are the same bits; ``"auto"`` switches to it once its
library is built (in the background: see :mod:`._fused` for the build, the cache and the fallback).

The results are *exact*: every requested ``s_(r)`` equals what ``torch.sort`` gives, bit for bit
(ties and ``±inf`` included). Sums are accumulated in the input dtype, in an order that depends on the
network (not on the block width nor the thread count), so they match ``sort(...)[lo:hi].sum(0)`` up
to rounding. Inputs must not contain NaN (the rules drop such rows first). No autograd: results are
computed under :func:`torch.no_grad`.

Peak extra memory: ``network``: the output ``(d,)`` plus, per worker thread, ``(slots + n + 1) x B``
scratch values (``slots <= n + 1`` working rows, ``n`` rank-indexed output rows, one sum row; ``B``
the block: 32768 float32 / 16384 float64 columns on CPU, about 5.5 MB per thread at ``n = 20``;
``2^22`` columns on a GPU, about 0.7 GB at ``n = 20``, float32) and the rule's few block-sized
temporaries. ``sort``: per block, the sorted values plus int64 indices (``3 n B`` values' worth).

The ``"sort"`` method (one ``torch.sort`` per block) computes the same thing; ``"auto"`` uses it for
small ``d``, where the network's fixed overhead dominates. Both paths are tested against each other.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import torch

from . import _fused

__all__ = [
    "Plan",
    "merge_exchange",
    "plan",
    "coordinatewise",
    "default_block",
    "dimension_factor",
    "METHODS",
]

#: Kernel choices of :func:`coordinatewise`.
METHODS = ("auto", "network", "sort", "fused")

#: Below this many columns ``"auto"`` uses ``"sort"`` (there the network's per-call overhead dominates).
SMALL_D = 1024

#: ``combine(s, partial_sum, out)``: ``s[r]`` ``(w,)`` is the sorted value of rank ``r`` for each requested
#: rank (other rows unspecified), ``partial_sum`` the sum of the requested rank range (or None).
Combine = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], None]


def merge_exchange(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators of Batcher's merge-exchange sort of ``n`` keys (Knuth's Algorithm M), in order.

    Each comparator ``(i, j)``, ``i < j``, puts the smaller value at ``i`` and the larger at ``j``;
    applying them in order sorts any input in non-decreasing order.
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

    Handles ``0 .. n-1`` name the input rows (read only), ``n .. n+slots-1`` working scratch rows and
    ``n+slots+r`` the output row of rank ``r``. Each op is ``(kind, a, b, out)``: ``out <- min(a, b)``
    (kind 0), ``max(a, b)`` (kind 1) or ``a`` (kind 2, a copy), element-wise. Afterwards the output
    row of every rank in ``ranks`` holds that rank's sorted values, and the output rows of ranks
    ``lo .. hi-1`` hold those ranks' sorted values in some order (enough for their sum).
    """

    n: int
    ranks: tuple[int, ...]
    lo: int
    hi: int
    ops: tuple[tuple[int, int, int, int], ...]
    slots: int


_DEAD, _SUM, _EXACT = 0, 1, 2


@lru_cache(maxsize=512)
def plan(n: int, ranks: tuple[int, ...], lo: int = 0, hi: int = 0) -> Plan:
    """Prune :func:`merge_exchange` to produce ``ranks`` and the sum of ranks ``lo .. hi-1``.

    Backwards from the outputs, each position is unused, only summed, or needed exactly. A comparator
    with both outputs unused, or both only summed (``min + max = a + b``), is dropped; one with a
    single used output becomes a lone ``min`` (``max``); the inputs of a kept comparator are needed
    exactly. Forwards, each produced value gets a working row, reusing rows whose value was consumed;
    the last write of each output position goes to that rank's output row.
    """
    if any(not 0 <= r < n for r in ranks) or not (0 <= lo <= hi <= n):
        raise ValueError(f"ranks {ranks} / range [{lo}, {hi}) out of bounds for n={n}")
    state = [_DEAD] * n
    for r in range(lo, hi):
        state[r] = _SUM
    for r in ranks:
        state[r] = _EXACT
    wanted = [r for r in range(n) if state[r] != _DEAD]
    needed: list[tuple[int, int, bool, bool]] = []
    for i, j in reversed(merge_exchange(n)):
        si, sj = state[i], state[j]
        if si == sj and si != _EXACT:
            continue
        needed.append((i, j, si != _DEAD, sj != _DEAD))
        state[i] = state[j] = _EXACT
    pos, free, slots = list(range(n)), [], 0
    ops: list[list[int]] = []

    def fresh() -> int:
        nonlocal slots
        if free:
            return free.pop()
        slots += 1
        return n + slots - 1

    for i, j, need_lo, need_hi in reversed(needed):
        a, b = pos[i], pos[j]
        if need_lo and need_hi:
            lo_out = fresh()  # a and b are both still read by the max
            ops.append([0, a, b, lo_out])
            hi_out = b if b >= n else fresh()
            ops.append([1, a, b, hi_out])
            if a >= n:
                free.append(a)
            pos[i], pos[j] = lo_out, hi_out
        else:
            keep, other = (a, b) if need_lo else (b, a)
            out = keep if keep >= n else (other if other >= n else fresh())
            ops.append([int(not need_lo), a, b, out])
            if other != out and other >= n:
                free.append(other)
            pos[i if need_lo else j], pos[j if need_lo else i] = out, -1
    # Redirect the last write of each wanted position to its rank's output row (copy if never written).
    last_write = {op[3]: t for t, op in enumerate(ops)}
    for r in wanted:
        if pos[r] < n:
            ops.append([2, pos[r], pos[r], n + slots + r])
        else:
            ops[last_write[pos[r]]][3] = n + slots + r
    return Plan(n, ranks, lo, hi, tuple(tuple(op) for op in ops), slots)


def default_block(x: torch.Tensor) -> int:
    """Columns per block: 128 KB rows on CPU (single-threaded row ops, cache-resident scratch), else 2^22.

    torch runs an element-wise op on one thread up to 32768 elements, so 32768 float32 (16384
    float64) columns keep every row op single-threaded.
    """
    if x.device.type != "cpu":
        return 1 << 22
    return (1 << 17) // x.element_size()


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A shared pool per process (keyed by pid: a forked child must not reuse its parent's threads)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="resam-order")
    return _POOLS[key]


def _copy(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(a)


def _network(
    x: torch.Tensor, rows: list[int] | None, pl: Plan, combine: Combine, out: torch.Tensor, block: int
) -> None:
    n, d = pl.n, x.shape[1]
    picked = None if rows is None else [x[r] for r in rows]  # row views, sliced per block (no copy)
    nblocks = -(-d // block)
    workers = min(torch.get_num_threads(), nblocks) if x.device.type == "cpu" else 1
    counter = itertools.count()  # blocks are handed out dynamically (next() is atomic under the GIL)
    fns = (torch.minimum, torch.maximum, _copy)
    ops, lo, hi, first_out = pl.ops, pl.lo, pl.hi, pl.slots
    inference = torch.is_inference_mode_enabled()  # grad modes are per thread: carry the caller's over

    def work() -> None:
        with torch.inference_mode(inference), torch.no_grad():
            scratch = torch.empty((pl.slots + n + 1, min(block, d)), dtype=x.dtype, device=x.device)
            width, scratch_rows = scratch.shape[1], None
            for b in iter(counter.__next__, None):
                if b >= nblocks:
                    return
                start, stop = b * block, min(d, (b + 1) * block)
                if scratch_rows is None or stop - start != width:  # first block here, or the narrower last
                    width = stop - start
                    view = scratch[:, :width]
                    scratch_rows = list(view.unbind(0))
                    s, acc = view[first_out : first_out + n], scratch_rows[-1]
                    summed = scratch_rows[first_out + lo : first_out + hi]
                inputs = x[:, start:stop].unbind(0) if picked is None else [v[start:stop] for v in picked]
                src = [*inputs, *scratch_rows]
                for kind, i, j, o in ops:
                    fns[kind](src[i], src[j], out=src[o])
                if hi > lo:  # row by row: one call on (hi - lo, w) values would fork OpenMP threads
                    torch.add(summed[0], summed[1], out=acc) if len(summed) > 1 else acc.copy_(summed[0])
                    for row in summed[2:]:
                        acc.add_(row)
                combine(s, acc if hi > lo else None, out[start:stop])

    futures = [_pool(workers - 1).submit(work) for _ in range(workers - 1)] if workers > 1 else []
    work()
    for fut in futures:
        fut.result()


def _sort(
    x: torch.Tensor, rows: list[int] | None, pl: Plan, combine: Combine, out: torch.Tensor, block: int
) -> None:
    d = x.shape[1]
    sub = None if rows is None else torch.tensor(rows, dtype=torch.long, device=x.device)
    for start in range(0, d, block):
        stop = min(d, start + block)
        cols = x[:, start:stop]
        s = (cols if sub is None else cols.index_select(0, sub)).sort(dim=0).values
        acc = s[pl.lo : pl.hi].sum(dim=0) if pl.hi > pl.lo else None
        combine(s, acc, out[start:stop])


@torch.no_grad()
def coordinatewise(
    x: torch.Tensor,
    ranks: tuple[int, ...] | list[int],
    combine: Combine,
    summed: tuple[int, int] | None = None,
    *,
    method: str = "auto",
    block: int | None = None,
    rows: Sequence[int] | None = None,
    fused: _fused.Spec | None = None,
) -> torch.Tensor:
    """Per column of ``x`` ``(n, d)``: sorted values at ``ranks`` (+ sum of ranks ``summed=(lo, hi)``).

    ``combine(s, partial_sum, out)`` is called once per block of ``w`` columns: ``s`` ``(n, w)`` holds
    in row ``r`` the sorted values of rank ``r`` for every requested rank (other rows unspecified;
    rows ``lo .. hi-1`` hold those ranks in some order); ``partial_sum`` ``(w,)`` is the sum of ranks
    ``lo .. hi-1`` (``None`` without ``summed``); the ``out`` slice ``(w,)`` must be filled. It may
    modify ``partial_sum`` but not ``s``, and may run in several threads at once (disjoint blocks).

    Returns ``out`` ``(d,)`` with ``x``'s dtype and device. ``method``: ``"network"``, ``"sort"``,
    ``"fused"`` or ``"auto"``; ``block``: columns per block (default :func:`default_block`); ``rows``: use
    only these rows of ``x``, in this order, without copying them (``n`` is then ``len(rows)``). ``x``
    must not contain NaN.

    ``fused``: the rule as a :data:`._fused.Spec` whose C kernel computes what ``combine`` computes, bit
    for bit (``ranks`` must include :func:`._fused.ranks_of` of it). ``"fused"`` then runs that kernel
    (built now if needed; the network where it cannot run, logged once), and ``"auto"`` runs it once it
    is loaded (a missing one is built in the background for ``d >= SMALL_D``, see :mod:`._fused`). Without
    ``fused``, ``"fused"`` is ``"network"``. ``"auto"`` otherwise: ``"sort"`` for ``d < SMALL_D``, else
    ``"network"``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n, d = x.shape
    if rows is not None:
        rows = [int(r) for r in rows]
        if any(not 0 <= r < n for r in rows):
            raise ValueError(f"rows {rows} out of bounds for x with {n} rows")
        n = len(rows)
    lo, hi = summed if summed is not None else (0, 0)
    pl = plan(n, tuple(int(r) for r in ranks), lo, hi)
    block = default_block(x) if block is None else int(block)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    if d == 0:
        return out
    if fused is not None and method in ("auto", "fused"):
        fn = _fused_kernel(x, fused, n, method, d)
        if fn is not None:
            _fused.run(fn, x, rows, out)
            return out
    if method == "auto":
        method = "sort" if d < SMALL_D else "network"
    elif method == "fused":
        method = "network"
    (_network if method == "network" else _sort)(x, rows, pl, combine, out, block)
    return out


def _fused_kernel(x: torch.Tensor, spec: _fused.Spec, n: int, method: str, d: int):
    """The fused kernel to run for this call, or None (see :func:`coordinatewise`)."""
    switch = _fused.enabled()
    if switch == "off":
        if method == "fused":
            _fused._log_once("off", 30, "fused coordinate-wise kernels disabled by %s=0; using the torch "
                             "min/max network", _fused.ENV)
        return None
    why = _fused.usable(x)
    if why is not None:
        if method == "fused" or d >= SMALL_D:
            _fused._log_once(f"usable:{why}", 30, "fused coordinate-wise kernels do not run on %s; "
                             "using the torch min/max network", why)
        return None
    if method == "fused" or switch == "sync":
        mode = "block"
    else:
        mode = "background" if d >= SMALL_D else "peek"
    return _fused.kernel(tuple(spec), n, x.dtype, mode=mode)


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
