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
* Each layer is three in-place multi-tensor calls (``torch._foreach_copy_`` of the ``a`` rows of the
  full comparators, ``_foreach_minimum_``, ``_foreach_maximum_``), so the Python and dispatch overhead
  is per layer, not per comparator.
* Columns are processed in blocks of :func:`default_block` columns (32 KB rows on CPU): a block is
  copied into ``n + n/2 + 1`` scratch rows that stay in one core's L2 cache while the network runs.
  On CPU, ``torch.get_num_threads()`` Python threads take blocks in turn (torch releases the GIL
  inside each call); each call is then single-threaded, which avoids one OpenMP barrier per row
  operation (these made the kernel up to 30x slower when the machine was busy). Other devices run
  the same layers on larger blocks, from one thread.

The results are *exact*: every requested ``s_(r)`` equals what ``torch.sort`` gives, bit for bit
(ties and ``±inf`` included). Sums are accumulated in the input dtype, in an order that depends on the
network, so they match ``sort(...)[lo:hi].sum(0)`` up to rounding. Inputs must not contain NaN (the
rules drop such rows first). No autograd: results are computed under :func:`torch.no_grad`.

Peak extra memory: ``network``: the output ``(d,)`` plus, per worker thread, ``(n + n/2 + 1) x B``
scratch values (``B`` the block: 8192 float32 columns on CPU, about 1 MB at ``n = 20``;
``(1.5 n + 1) x 2^22`` values on a GPU). ``sort``: per block, the sorted values plus int64 indices.

The ``"sort"`` method (one ``torch.sort`` per block) computes the same thing; ``"auto"`` uses it for
small ``d``, where the network's fixed overhead dominates. Both paths are tested against each other.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = [
    "Plan",
    "merge_exchange_layers",
    "merge_exchange",
    "plan",
    "coordinatewise",
    "default_block",
    "dimension_factor",
    "METHODS",
]

#: Kernel choices of :func:`coordinatewise`.
METHODS = ("auto", "network", "sort")

#: Below this many columns ``"auto"`` uses ``"sort"`` (there the network's per-call overhead dominates).
SMALL_D = 1024

#: ``combine(s, partial_sum, out)``: ``s`` ``(n, w)`` holds the sorted values at the requested ranks
#: (other rows are unspecified), ``partial_sum`` the sum of the requested rank range (or None).
Combine = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], None]


def merge_exchange_layers(n: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Batcher's merge-exchange sort of ``n`` keys (Algorithm M), as layers of disjoint comparators.

    Each comparator ``(i, j)``, ``i < j``, puts the smaller value at ``i`` and the larger at ``j``;
    applying the layers in order sorts any input in non-decreasing order.
    """
    layers: list[tuple[tuple[int, int], ...]] = []
    if n < 2:
        return ()
    t = (n - 1).bit_length()
    p = 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            layer = tuple((i, i + d) for i in range(n - d) if i & p == r)
            if layer:
                layers.append(layer)
            if q == p:
                break
            d, q, r = q - p, q >> 1, p
        p >>= 1
    return tuple(layers)


def merge_exchange(n: int) -> tuple[tuple[int, int], ...]:
    """The comparators of :func:`merge_exchange_layers`, flattened in order."""
    return tuple(itertools.chain.from_iterable(merge_exchange_layers(n)))


@dataclass(frozen=True)
class Plan:
    """A pruned layered network on scratch rows ``0 .. n-1`` (the values) and ``n ..`` (temporaries).

    Each layer is ``(copy_dst, copy_src, min_a, min_b, max_a, max_b)`` (tuples of row indices):
    ``row[copy_dst] <- row[copy_src]``, then ``row[min_a] <- min(row[min_a], row[min_b])``, then
    ``row[max_a] <- max(row[max_a], row[max_b])``, element-wise and pairwise. Afterwards row ``r``
    holds the sorted value of rank ``r`` for every ``r`` in ``ranks``, and rows ``lo .. hi-1`` hold the
    sorted values of ranks ``lo .. hi-1`` in some order.
    """

    n: int
    ranks: tuple[int, ...]
    lo: int
    hi: int
    layers: tuple[tuple[tuple[int, ...], ...], ...]
    temps: int

    @property
    def row_ops(self) -> int:
        """Element-wise row operations per column block (copies of temporaries included)."""
        return sum(len(ly[0]) + len(ly[2]) + len(ly[4]) for ly in self.layers)


_DEAD, _SUM, _EXACT = 0, 1, 2


@lru_cache(maxsize=512)
def plan(n: int, ranks: tuple[int, ...], lo: int = 0, hi: int = 0) -> Plan:
    """Prune :func:`merge_exchange_layers` to produce ``ranks`` and the sum of ranks ``lo .. hi-1``.

    Backwards from the outputs, each position is unused, only summed, or needed exactly. A comparator
    with both outputs unused, or both only summed (``min + max = a + b``), is dropped; one with a
    single used output becomes a lone ``min`` (``max``); the inputs of a kept comparator are needed
    exactly.
    """
    if any(not 0 <= r < n for r in ranks) or not (0 <= lo <= hi <= n):
        raise ValueError(f"ranks {ranks} / range [{lo}, {hi}) out of bounds for n={n}")
    state = [_DEAD] * n
    for r in range(lo, hi):
        state[r] = _SUM
    for r in ranks:
        state[r] = _EXACT
    layers, temps = [], 0
    for layer in reversed(merge_exchange_layers(n)):
        full, lo_only, hi_only = [], [], []
        for i, j in layer:
            si, sj = state[i], state[j]
            if si == sj and si != _EXACT:
                continue
            (full if si and sj else lo_only if si else hi_only).append((i, j))
            state[i] = state[j] = _EXACT
        if not (full or lo_only or hi_only):
            continue
        tmp = tuple(range(n, n + len(full)))
        temps = max(temps, len(full))
        layers.append((
            tmp, tuple(i for i, _ in full),
            tuple(i for i, _ in full + lo_only), tuple(j for _, j in full + lo_only),
            tuple(j for _, j in full + hi_only), tmp + tuple(i for i, _ in hi_only),
        ))
    return Plan(n, ranks, lo, hi, tuple(reversed(layers)), temps)


def default_block(x: torch.Tensor) -> int:
    """Columns per block: 32 KB rows on CPU (the scratch stays in a core's L2 cache), 2^22 elsewhere."""
    if x.device.type != "cpu":
        return 1 << 22
    return (1 << 15) // x.element_size()


class _Scratch:
    """Per-worker scratch rows and the tensor lists of every layer (built once per block width)."""

    def __init__(self, pl: Plan, x: torch.Tensor, width: int) -> None:
        self.buf = torch.empty((pl.n + pl.temps + 1, width), dtype=x.dtype, device=x.device)
        self.pl, self.width = pl, width
        self._views(width)

    def _views(self, width: int) -> None:
        rows = self.buf[:, :width].unbind(0)
        self.s, self.acc = self.buf[: self.pl.n, :width], rows[-1]
        self.layers = [tuple([rows[k] for k in idx] for idx in ly) for ly in self.pl.layers]

    def run(self, x: torch.Tensor, combine: Combine, out: torch.Tensor) -> None:
        if x.shape[1] != self.width:  # the last, narrower block
            self.width = x.shape[1]
            self._views(self.width)
        self.s.copy_(x)
        for cp_dst, cp_src, mn_a, mn_b, mx_a, mx_b in self.layers:
            if cp_dst:
                torch._foreach_copy_(cp_dst, cp_src)
            if mn_a:
                torch._foreach_minimum_(mn_a, mn_b)
            if mx_a:
                torch._foreach_maximum_(mx_a, mx_b)
        acc = None
        if self.pl.hi > self.pl.lo:
            acc = torch.sum(self.s[self.pl.lo : self.pl.hi], dim=0, out=self.acc)
        combine(self.s, acc, out)


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A shared pool per process (keyed by pid: a forked child must not reuse its parent's threads)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="resam-order")
    return _POOLS[key]


def _network(x: torch.Tensor, pl: Plan, combine: Combine, out: torch.Tensor, block: int) -> None:
    d = x.shape[1]
    nblocks = -(-d // block)
    workers = min(torch.get_num_threads(), nblocks) if x.device.type == "cpu" else 1
    counter = itertools.count()  # blocks are handed out dynamically (next() is atomic under the GIL)

    def work() -> None:
        scratch = _Scratch(pl, x, min(block, d))
        with torch.no_grad():
            for b in iter(counter.__next__, None):
                if b >= nblocks:
                    return
                start, stop = b * block, min(d, (b + 1) * block)
                scratch.run(x[:, start:stop], combine, out[start:stop])

    futures = [_pool(workers - 1).submit(work) for _ in range(workers - 1)] if workers > 1 else []
    work()
    for fut in futures:
        fut.result()


def _sort(x: torch.Tensor, pl: Plan, combine: Combine, out: torch.Tensor, block: int) -> None:
    d = x.shape[1]
    for start in range(0, d, block):
        stop = min(d, start + block)
        s = x[:, start:stop].sort(dim=0).values
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
) -> torch.Tensor:
    """Per column of ``x`` ``(n, d)``: sorted values at ``ranks`` (+ sum of ranks ``summed=(lo, hi)``).

    ``combine(s, partial_sum, out)`` is called once per block of ``w`` columns: ``s`` ``(n, w)`` holds
    the sorted values at the requested ranks (its other rows are unspecified), ``partial_sum`` ``(w,)``
    the sum of ranks ``lo .. hi-1`` (``None`` without ``summed``), and the ``out`` slice ``(w,)`` must
    be filled. It may modify ``partial_sum`` but not ``s``, and may be called from several threads at
    once (on disjoint blocks). Returns ``out`` ``(d,)`` with ``x``'s dtype and device. ``method``:
    ``"network"``, ``"sort"`` or ``"auto"`` (network unless ``d < SMALL_D``); ``block``: columns per
    block (default :func:`default_block`).
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
