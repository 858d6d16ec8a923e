r"""Fused CPU kernels of the coordinate-wise rules: one pass over memory, the sorting network in registers.

:func:`._order.coordinatewise` runs its pruned comparator network as element-wise torch calls on rows of
column blocks: about 150-200 calls per block at ``n = 20``, so its cost is bound by the number of tensor
operations (15-20x a read pass ``x.sum(0)`` where memory is fast), not by memory. Here the same network,
followed by the rule's last step (median, trimmed sum, window around the median), is written out as
straight-line C for one column and compiled, so that the compiler's loop vectorizer runs it on 4-16
columns at a time in vector registers (SSE2, AVX2, AVX-512: the instruction set torch reports,
``torch.backends.cpu.get_cpu_capability()``). Every input value is read once; the only write is the
``(d,)`` output. ``torch.get_num_threads()`` Python threads take column chunks in turn (ctypes releases
the GIL during each call; no OpenMP inside).

Why C through the system compiler, not ``torch.compile`` or numba: the source is a few hundred lines
without any header but ``stdint.h``, so it compiles in a fraction of a second with ``cc`` (a torch C++
extension needs torch's headers: 20-40 s per build); no new Python dependency; the same comparator
network as the torch path, so both give the same bits.

Exactness
---------
The C code performs the same operations as the torch path, in the same order, on the same values:
``min``/``max`` comparators (exact), the median's ``0.5 a + 0.5 b`` (two products and one sum, no fused
multiply-add: compiled with ``-ffp-contract=off``), sums in rank order, the same divisions. Every result is
therefore equal to the torch path's and to a sort-based reference (tested). Values compare as IEEE values:
``-0.0 == 0.0``, so the sign of a zero result is not specified (torch's own ``minimum`` picks
differently in its vector and scalar loops).

Build, cache, fallback
----------------------
One shared library per (network, rule, dtype, instruction set), compiled lazily on first use with ``cc``
(``$CC``, else ``cc``, ``gcc``, ``clang``) and cached in ``$RESAM_FUSED_CACHE`` (default
``~/.cache/resam_flower/fused``); a cached library loads in milliseconds in later processes. A build takes
0.2-1 s and is announced by one log line (logger ``resam_flower.aggregators.fused``, INFO). With
``method="auto"`` (the rules' default) a missing library is built in a background thread while the call
runs on the torch network: the first round never waits for the compiler, and the result is the same bits
either way. ``method="fused"`` builds synchronously. ``RESAM_FUSED=0`` disables the fused path;
``RESAM_FUSED=sync`` makes ``"auto"`` build synchronously too. Where the fused path cannot run (no
compiler, a failed build, a dtype other than float32/float64, a device other than CPU, columns not
contiguous) the torch network runs instead; each reason is logged once per process (WARNING).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Spec", "ranks_of", "kernel", "load", "compile_source", "run", "wait", "available", "compiler",
    "cache_dir", "capability", "for_each", "row_pointers", "ENV",
]

log = logging.getLogger("resam_flower.aggregators.fused")

#: Environment switch: ``0``/``off`` disables the fused path, ``sync`` builds synchronously under ``"auto"``.
ENV = "RESAM_FUSED"

#: A fused rule: ``("median",)``, ``("trimmed", lo, hi)`` (mean of ranks ``lo .. hi-1``) or
#: ``("closest", beta)`` (mean of the ``beta`` values closest to the median, see ``meamed.mean_of_closest``).
Spec = tuple

_CTYPES = {torch.float32: "float", torch.float64: "double"}
_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma",
               "-mprefer-vector-width=512"],
    "AVX2": ["-mavx2", "-mfma"],
}
_VERSION = 1  # bump when the generated code changes meaning

_lock = threading.Lock()
_loaded: dict[str, ctypes._CFuncPtr | None] = {}  # key -> function (None: failed)
_pending: dict[str, Future] = {}
_logged: set[str] = set()
_BUILDERS: dict[int, ThreadPoolExecutor] = {}


def _log_once(key: str, level: int, msg: str, *args: object) -> None:
    with _lock:
        if key in _logged:
            return
        _logged.add(key)
    log.log(level, msg, *args)


def enabled() -> str:
    """``"off"``, ``"sync"`` or ``"auto"`` from ``$RESAM_FUSED``."""
    v = os.environ.get(ENV, "").strip().lower()
    if v in ("0", "off", "false", "no"):
        return "off"
    return "sync" if v == "sync" else "auto"


def compiler() -> str | None:
    """The C compiler used: ``$CC`` if set (a missing one means none), else ``cc``, ``gcc``, ``clang``."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def cache_dir() -> Path:
    env = os.environ.get("RESAM_FUSED_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resam_flower" / "fused"


def capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        return "DEFAULT"


def _flags() -> list[str]:
    # -ffp-contract=off: no fused multiply-add (the torch path rounds each product); -fno-trapping-math lets
    # the vectorizer if-convert the window's selects (it changes no value, only assumptions on FP traps)
    flags = ["-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
             "-std=c99"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += _FLAGS.get(capability(), [])
    return flags


def ranks_of(spec: Spec, n: int) -> tuple[int, ...]:
    """The ranks the network must produce exactly for ``spec`` on ``n`` values."""
    if spec[0] == "median":
        return ((n - 1) // 2,) if n % 2 else (n // 2 - 1, n // 2)
    if spec[0] == "trimmed":
        return tuple(range(spec[1], spec[2]))
    if spec[0] == "closest":
        return tuple(range(n))
    raise ValueError(f"unknown fused spec {spec!r}")


def _epilogue(spec: Spec, n: int, s: dict[int, str], ct: str) -> list[str]:
    """C statements computing ``o[j]`` from the sorted values ``s[r]`` (C expressions)."""
    half = f"(({ct})0.5)"
    if spec[0] == "median":
        if n % 2:
            return [f"o[j] = {s[(n - 1) // 2]};"]
        return [f"o[j] = {half} * {s[n // 2 - 1]} + {half} * {s[n // 2]};"]
    if spec[0] == "trimmed":
        lo, hi = spec[1], spec[2]
        lines = [f"{ct} acc = {s[lo]};"]
        lines += [f"acc = acc + {s[r]};" for r in range(lo + 1, hi)]
        return [*lines, f"o[j] = acc / (({ct}){hi - lo});"]
    beta = spec[1]
    big = n - beta
    if n % 2:
        lines = [f"{ct} med = {s[(n - 1) // 2]};"]
    else:
        lines = [f"{ct} med = {half} * {s[n // 2 - 1]} + {half} * {s[n // 2]};"]
    for lo in range(big):  # nk_l: the window starts above rank l
        lines.append(f"int nk{lo} = (({s[lo + beta]} - med) - (med - {s[lo]})) < 0;")
    lines.append(f"{ct} acc = -(({ct})0.0);")
    for r in range(n):
        conds = ([f"!nk{r}"] if r < big else []) + ([f"nk{r - beta}"] if r >= beta else [])
        if conds:
            lines.append(f"acc = acc + (({' & '.join(conds)}) ? {s[r]} : -(({ct})0.0));")
        else:
            lines.append(f"acc = acc + {s[r]};")
    return [*lines, f"o[j] = acc / (({ct}){beta});"]


def source(spec: Spec, n: int, dtype: torch.dtype) -> str:
    """The C source of the fused kernel ``void k(const T *const *rows, T *out, int64_t a, int64_t b)``."""
    from ._order import plan

    ct = _CTYPES[dtype]
    pl = plan(n, ranks_of(spec, n))
    lines = [
        "#include <stdint.h>",
        f"typedef {ct} T;",
        "void k(const T *const *rows, T *restrict out, int64_t a, int64_t b) {",
    ]
    lines += [f"  const T *restrict x{i} = rows[{i}];" for i in range(n)]
    lines += ["  T *restrict o = out;", "  for (int64_t j = a; j < b; ++j) {"]
    body: list[str] = []
    cur = {i: f"x{i}[j]" for i in range(n)}
    for i in range(n):
        body.append(f"T v{i} = x{i}[j];")
        cur[i] = f"v{i}"
    counter = n
    for kind, ha, hb, ho in pl.ops:
        a, b = cur[ha], cur[hb]
        name = f"v{counter}"
        counter += 1
        if kind == 0:
            body.append(f"T {name} = ({b} < {a}) ? {b} : {a};")
        elif kind == 1:
            body.append(f"T {name} = ({a} < {b}) ? {b} : {a};")
        else:
            body.append(f"T {name} = {a};")
        cur[ho] = name
    first_out = n + pl.slots
    s = {r: cur[first_out + r] for r in ranks_of(spec, n)}
    body += _epilogue(spec, n, s, ct)
    lines += ["    " + line for line in body]
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def _key(spec: Spec, n: int, dtype: torch.dtype) -> str:
    return f"{spec!r}|{n}|{dtype}"


Kernel = ctypes._CFuncPtr


def compile_source(src: str, what: str, argtypes: list, extra_flags: tuple[str, ...] = ()) -> Kernel | None:
    """Load the cached library of C source ``src`` (function ``k``) or compile it; None (logged once) if not.

    ``what`` names the kernel in the log lines; ``extra_flags`` follow :func:`_flags` (a later flag wins).
    """
    cc = compiler()
    if cc is None:
        _log_once("nocc", logging.WARNING, "fused kernels disabled: no C compiler found (set CC, or install "
                  "gcc); using the torch fallbacks (min/max network, matmul Gram)")
        return None
    flags = [*_flags(), *extra_flags]
    digest = hashlib.sha256("\n".join([str(_VERSION), cc, *flags, capability(), platform.machine(), src])
                            .encode()).hexdigest()[:20]
    folder = cache_dir()
    lib = folder / f"fused_{digest}.so"
    try:
        if not lib.exists():
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            log.info("building %s (%s, %s) in %s ...", what, capability(), os.path.basename(cc), folder)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                c_file, so_file = Path(tmp) / "k.c", Path(tmp) / "k.so"
                c_file.write_text(src)
                res = subprocess.run([cc, *flags, str(c_file), "-o", str(so_file)],
                                     capture_output=True, text=True, timeout=300)
                if res.returncode:
                    raise RuntimeError(f"{os.path.basename(cc)} failed: {res.stderr.strip()[-400:]}")
                os.replace(so_file, lib)  # atomic: other processes see the whole file or none
            log.info("built %s in %.2f s", what, time.perf_counter() - t0)
        fn = ctypes.CDLL(str(lib)).k
    except Exception as exc:
        _log_once(f"build:{exc}", logging.WARNING, "%s unavailable (%s: %s); using its torch fallback",
                  what, type(exc).__name__, exc)
        return None
    fn.restype = None
    fn.argtypes = argtypes
    return fn


def _build(spec: Spec, n: int, dtype: torch.dtype) -> ctypes._CFuncPtr | None:
    return compile_source(source(spec, n, dtype), f"fused kernel {spec} for n={n}, {dtype}",
                          [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64])


def _builder() -> ThreadPoolExecutor:
    pid = os.getpid()
    if pid not in _BUILDERS:
        _BUILDERS[pid] = ThreadPoolExecutor(1, thread_name_prefix="resam-fused-build")
    return _BUILDERS[pid]


def _finish(key: str, build: Callable[[], ctypes._CFuncPtr | None]) -> ctypes._CFuncPtr | None:
    fn = build()
    with _lock:
        _loaded[key] = fn
        _pending.pop(key, None)
    return fn


def load(key: str, build: Callable[[], Kernel | None], mode: str = "block") -> Kernel | None:
    """The kernel cached under ``key`` in this process, built by ``build()`` (None where that failed).

    ``mode``: ``"block"`` loads or builds it now; ``"background"`` returns it if loaded, else starts loading
    or building it in a background thread and returns None; ``"peek"`` returns it if loaded, else None.
    """
    with _lock:
        if key in _loaded:
            return _loaded[key]
        fut = _pending.get(key)
        if fut is not None and getattr(fut, "pid", None) != os.getpid():
            fut = None  # started by the parent of this forked process: its thread is not here
        if fut is None and mode == "background":
            _pending[key] = fut = _builder().submit(_finish, key, build)
            fut.pid = os.getpid()  # type: ignore[attr-defined]
    if mode != "block":
        return None
    if fut is not None:
        return fut.result()
    return _finish(key, build)


def kernel(spec: Spec, n: int, dtype: torch.dtype, *, mode: str = "block") -> ctypes._CFuncPtr | None:
    """The compiled kernel of ``spec`` on ``n`` rows of ``dtype``, or None (``mode``: see :func:`load`).

    None also where the fused path cannot run (the reason is logged once).
    """
    if dtype not in _CTYPES or n < 1:
        _log_once(f"dtype:{dtype}", logging.WARNING, "fused coordinate-wise kernels support float32 and "
                  "float64, not %s; using the torch min/max network", dtype)
        return None
    return load(_key(spec, n, dtype), lambda: _build(spec, n, dtype), mode)


def wait() -> None:
    """Wait for the background builds started so far (benchmarks call it before timing)."""
    with _lock:
        futs = [f for f in _pending.values() if getattr(f, "pid", None) == os.getpid()]
    for fut in futs:
        fut.result()


def available() -> bool:
    """Whether the fused path can run here (enabled, a compiler, and a trial build that works)."""
    return enabled() != "off" and kernel(("median",), 3, torch.float32) is not None


def usable(x: torch.Tensor) -> str | None:
    """Why ``x`` cannot go through the fused path (None if it can)."""
    if x.device.type != "cpu":
        return f"device {x.device.type}"
    if x.dtype not in _CTYPES:
        return f"dtype {x.dtype}"
    if x.dim() != 2 or (x.shape[1] > 1 and x.stride(1) != 1):
        return "columns not contiguous"
    return None


def row_pointers(x: torch.Tensor, rows: list[int] | None = None) -> ctypes.Array:
    """C array of the addresses of ``x``'s ``rows`` (all by default): a kernel's ``const T *const *``."""
    idx = range(x.shape[0]) if rows is None else rows
    step, base = x.stride(0) * x.element_size(), x.data_ptr()
    return (ctypes.c_void_p * len(idx))(*[base + r * step for r in idx])


def run(fn: ctypes._CFuncPtr, x: torch.Tensor, rows: list[int] | None, out: torch.Tensor) -> None:
    """Run ``fn`` on every column of ``x`` (its ``rows``) into ``out``, on torch.get_num_threads() threads."""
    d = x.shape[1]
    ptrs = row_pointers(x, rows)
    optr = out.data_ptr()
    workers = max(1, min(torch.get_num_threads(), d // 4096))
    if workers == 1:
        fn(ptrs, optr, 0, d)
        return
    chunk = max(4096, -(-d // (8 * workers)))
    chunk = -(-chunk // 64) * 64  # whole cache lines per chunk
    for_each(range(0, d, chunk), lambda start: fn(ptrs, optr, start, min(d, start + chunk)), workers)


def for_each(items: Iterable, work: Callable[[Any], None], workers: int) -> None:
    """``work(item)`` for every item, taken in turn by ``workers`` threads (this one included)."""
    from ._order import _pool

    todo = iter(items)
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                item = next(todo, _DONE)
            if item is _DONE:
                return
            work(item)

    futures = [_pool(workers - 1).submit(loop) for _ in range(workers - 1)] if workers > 1 else []
    loop()
    for fut in futures:
        fut.result()


_DONE = object()


def reset() -> None:
    """Forget loaded kernels, failures and logged reasons (tests; builds in flight are waited for)."""
    wait()
    with _lock:
        _loaded.clear()
        _logged.clear()
