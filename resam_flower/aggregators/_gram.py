r"""Fused CPU kernel of the Gram matrix ``G = (x - x_r)(x - x_r)^T``: the upper triangle only, one read pass.

Every distance rule starts from ``G`` (:mod:`._linalg`). A BLAS ``x @ x.T`` at ``n = 20`` computes all
``n^2`` dot products, and at ``d = 10^6`` it is compute-bound (about 2-2.5x a read pass ``x.sum(0)`` on one
core). This kernel computes the ``n(n+1)/2`` products of the upper triangle (a symmetric rank-k product,
what BLAS calls ``syrk``), blocked so that every input value is read from memory once:

* columns are taken in chunks that fit the L1 cache (``n`` rows of a chunk: at most 24 KiB), copied into a
  buffer (centred at row ``r`` when asked: ``x_i - x_r`` in the input dtype, as the torch path does);
* the upper triangle is covered by square tiles of ``t x t`` row pairs whose ``t^2`` vector accumulators
  stay in registers while the tile runs over the chunk (``t = 4`` with 512-bit vectors: 16 accumulators and 8
  operands of 32 registers; ``t = 3`` with AVX2, which has 16), see :data:`SHAPES`;
* products and sums within :data:`FLUSH` columns are in the input dtype, per vector lane; every
  :data:`FLUSH` columns the lanes' partial sums are added into float64 accumulators, and at the end the lanes
  are summed in order. For float32 input that is ``FLUSH / lanes`` (128 with 16 lanes) float32 additions per
  partial sum instead of up to ``d`` in a BLAS kernel: the result is more accurate than
  ``(x @ x.T).to(float64)``, about 20x at ``d = 10^5`` and 150x at ``d = 10^6`` (the product roundings
  remain: the error bound that :mod:`._linalg`'s precision guard assumes, ``sqrt(d) * eps`` relative to the
  squared norms, still holds).

Determinism: the columns are split into fixed blocks of :data:`BLOCK` columns whatever the number of threads;
each block gives its own ``n x n`` partial sum and the partials are added in block order. The bits depend on
the input, the instruction set (vector width) and the compiler, not on the threads or their scheduling.
Unlike the coordinate-wise kernels (:mod:`._fused`), whose fused and torch paths give the same bits, this
kernel and a BLAS matmul do not: so it is never built in the background while a call runs on the other
path. It is compiled synchronously on first use (0.2-0.5 s, then cached on disk as in :mod:`._fused`) and
used by every call after that; ``RESAM_FUSED=0``, no C compiler, a failed build, another device or dtype,
non-contiguous rows, ``n >`` :data:`MAX_N` or an instruction set other than AVX2/AVX-512 give the matmul.
"""

from __future__ import annotations

import ctypes
import logging
import platform

import torch

from . import _fused

__all__ = ["source", "gram", "kernel", "usable", "BLOCK", "FLUSH", "MAX_N", "SHAPES"]

#: Columns of one block: a fixed split of the columns, independent of the number of threads.
BLOCK = 1 << 16
#: Columns summed in the input dtype (per vector lane) before the partial sums go into float64.
FLUSH = 2048
#: Largest ``n`` served: the per-thread accumulators hold ``n^2 / 2`` pairs x lanes (278 KiB at 64 with
#: AVX-512, zeroed per block), and for large ``n`` BLAS's own blocking is compute-efficient.
MAX_N = 64
#: Bytes of the chunk buffer (``n`` rows), to stay in a 32-48 KiB L1 data cache.
BUFFER = 24576
_CT = {torch.float32: "float", torch.float64: "double"}


#: (vector bytes, tile size) per instruction set: 16 accumulators + 8 operands of 32 registers (AVX-512),
#: 9 + 6 of 16 (AVX2). Elsewhere (SSE2, or torch told to dispatch lower, and other architectures) the
#: matmul runs: with 128-bit vectors and no FMA the kernel measured 1.25x slower than MKL's matmul here.
SHAPES = {"AVX512": (64, 4), "AVX2": (32, 3)}


def _shape() -> tuple[int, int] | None:
    """(vector bytes, tile size) for the instruction set the kernels are compiled for; None: not served."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    return SHAPES.get(_fused.capability())


def source(n: int, dtype: torch.dtype, vector_bytes: int | None = None, tile: int | None = None) -> str:
    """C source of ``void k(const T *const *rows, const T *ref, double *g, int64_t a, int64_t b)``.

    It writes into ``g`` (``n x n``, row-major) the Gram matrix of columns ``a .. b-1`` of the rows, centred
    at ``ref`` (a row of the same length) unless ``ref`` is NULL. The tile code is written once (its
    ``t^2`` accumulators unrolled) and looped over the tiles, so the source and its compile time do not
    grow with ``n``; the buffer has ``n`` rounded up to a multiple of ``t`` rows, the extra ones zero.
    """
    vb0, t0 = _shape() or (16, 3)
    vb, t = vector_bytes or vb0, tile or t0
    ct = _CT[dtype]
    size = 4 if dtype == torch.float32 else 8
    lanes = vb // size
    npad = -(-n // t) * t
    chunk = max(2 * lanes, (BUFFER // (size * npad)) // lanes * lanes)
    blocks = npad // t
    pairs = [(p, q) for p in range(t) for q in range(t)]
    upper = [(p, q) for p, q in pairs if p <= q]

    def tile(name: str, which: list[tuple[int, int]]) -> list[str]:
        body = [
            f"static inline void {name}(T (*restrict buf)[C], V *restrict part, int i0, int j0, "
            "int64_t pad) {",
            *[f"  V s{p}_{q} = part[{p * t + q}];" for p, q in which],
            "  for (int64_t c = 0; c < pad; c += L) {",
            *[f"    V u{p} = *(const V *)&buf[i0 + {p}][c];" for p in range(t)],
            *[f"    V v{q} = *(const V *)&buf[j0 + {q}][c];" for q in range(t)],
            *[f"    s{p}_{q} += u{p} * v{q};" for p, q in which],
            "  }",
            *[f"  part[{p * t + q}] = s{p}_{q};" for p, q in which],
            "}",
        ]
        return body

    lines = [
        "#include <stdint.h>",
        "#include <string.h>",
        f"typedef {ct} T;",
        f"typedef T V __attribute__((vector_size({vb})));",
        f"enum {{ N = {n}, NP = {npad}, TB = {blocks}, TT = {t * t}, C = {chunk}, L = {lanes}, "
        f"NT = {blocks * (blocks + 1) // 2}, FLUSH = {FLUSH} }};",
        *tile("tile", pairs),
        *tile("diag", upper),
        "void k(const T *const *rows, const T *ref, double *restrict g, int64_t a, int64_t b) {",
        "  static __thread double acc[NT * TT * L];",
        "  static __thread V part[NT * TT];",
        "  static __thread T buf[NP][C] __attribute__((aligned(64)));",
        "  memset(acc, 0, sizeof acc);",
        "  memset(part, 0, sizeof part);",
        "  if (NP > N) memset(buf[N], 0, (NP - N) * sizeof buf[0]);  /* padding rows: zero, never written */",
        "  int64_t since = 0;",
        "  for (int64_t c0 = a; c0 < b; c0 += C) {",
        "    int64_t len = b - c0 < C ? b - c0 : C;",
        "    int64_t pad = (len + L - 1) / L * L;",
        "    for (int r = 0; r < N; ++r) {",
        "      const T *xr = rows[r] + c0;",
        "      const T *q = ref ? ref + c0 : 0;",
        "      if (q) { for (int64_t c = 0; c < len; ++c) buf[r][c] = xr[c] - q[c]; }",
        "      else { for (int64_t c = 0; c < len; ++c) buf[r][c] = xr[c]; }",
        "      for (int64_t c = len; c < pad; ++c) buf[r][c] = (T)0;",
        "    }",
        "    int k = 0;",
        "    for (int bi = 0; bi < TB; ++bi) {",
        f"      diag(buf, part + k * TT, bi * {t}, bi * {t}, pad); ++k;",
        f"      for (int bj = bi + 1; bj < TB; ++bj, ++k) tile(buf, part + k * TT, bi * {t}, bj * {t}, pad);",
        "    }",
        "    since += pad;",
        "    if (since >= FLUSH || c0 + C >= b) {",
        "      const T *pf = (const T *)part;",
        "      for (int i = 0; i < NT * TT * L; ++i) acc[i] += (double)pf[i];",
        "      memset(part, 0, sizeof part);",
        "      since = 0;",
        "    }",
        "  }",
        "  int k = 0;",
        "  for (int bi = 0; bi < TB; ++bi)",
        "    for (int bj = bi; bj < TB; ++bj, ++k)",
        f"      for (int p = 0; p < {t}; ++p)",
        f"        for (int q = 0; q < {t}; ++q) {{",
        f"          int i = bi * {t} + p, j = bj * {t} + q;",
        "          if (i >= N || j >= N || (bi == bj && p > q)) continue;",
        "          double s = 0.0;",
        "          for (int l = 0; l < L; ++l) s += acc[(k * TT + p * " + str(t) + " + q) * L + l];",
        "          g[i * N + j] = s;",
        "          g[j * N + i] = s;",
        "        }",
        "}",
        "",
    ]
    return "\n".join(lines)


def _not_served(x: torch.Tensor) -> str | None:
    """Why the matmul is the intended path for ``x`` (another device, ``n > MAX_N``, an instruction set
    without the kernel), or None."""
    if x.device.type != "cpu":
        return f"device {x.device.type}"
    if x.shape[0] > MAX_N:
        return f"n = {x.shape[0]} > {MAX_N}"
    if _shape() is None:
        return f"instruction set {_fused.capability()} ({platform.machine()})"
    return None


def usable(x: torch.Tensor) -> str | None:
    """Why the fused Gram cannot serve ``x`` (None if it can)."""
    if _fused.enabled() == "off":
        return f"{_fused.ENV}=0"
    return _fused.usable(x) or _not_served(x)


_ARGTYPES = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]


def kernel(n: int, dtype: torch.dtype) -> _fused.Kernel | None:
    """The compiled Gram kernel for ``n`` rows of ``dtype`` (built now if needed), or None."""
    what = f"fused Gram kernel for n={n}, {dtype}"
    return _fused.load(f"gram|{n}|{dtype}", lambda: _fused.compile_source(
        source(n, dtype), what, _ARGTYPES, ("-ffp-contract=fast",)))


def gram(x: torch.Tensor, ref: int | None = None) -> torch.Tensor | None:
    """Float64 Gram matrix of ``x`` (centred at row ``ref``), ``(n, n)``; None where the kernel cannot run.

    The reason it cannot is logged once (WARNING, logger ``resam_flower.aggregators.fused``) except for
    ``n > MAX_N``, instruction sets without 256-bit vectors and other devices, where the matmul is the
    intended path.
    """
    why = usable(x)
    if why is not None:
        if _not_served(x) is None:  # the kernel should have run here: say why not
            _fused._log_once(f"gram:{why}", logging.WARNING, "fused Gram kernel does not run on %s; "
                             "using the matmul x @ x.T", why)
        return None
    n, d = x.shape
    fn = kernel(n, x.dtype)
    if fn is None:
        return None
    ptrs = _fused.row_pointers(x)
    rptr = None if ref is None else ptrs[ref]
    blocks = max(1, -(-d // BLOCK))
    parts = torch.empty((blocks, n, n), dtype=torch.float64)
    pptr, pstep = parts.data_ptr(), n * n * 8
    workers = max(1, min(torch.get_num_threads(), blocks))
    _fused.for_each(range(blocks), lambda k: fn(ptrs, rptr, pptr + k * pstep, k * BLOCK,
                                                min(d, (k + 1) * BLOCK)), workers)
    out = parts[0].clone()
    for k in range(1, blocks):  # in block order: the same bits for any number of threads
        out += parts[k]
    return out
