"""Speed of the distance-based rules, as a ratio to one read pass over the input (``x.sum(0)``).

Usage::

    python benchmarks/distance_kernels.py                       # n=20, d=1e6, f=4, float32, CPU, vs ByzFL
    python benchmarks/distance_kernels.py --device cuda --d 11000000 --no-byzfl
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/distance_kernels.py   # huge pages for large CPU tensors
    python benchmarks/distance_kernels.py --threads 1 --clock process   # stable on a shared machine
    python benchmarks/distance_kernels.py --rules krum,multikrum,nnm --floors   # + the BLAS floors

A fresh ``(n, d)`` CPU output (NNM) costs page faults on first touch, 1.5 to 4 read passes at n=20, d=1e6
on a 2-core machine; PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` (huge pages for large tensors) removes most of
it, for ByzFL too. (glibc's ``MALLOC_MMAP_THRESHOLD_`` cannot help: it is capped at 32 MB.)

Timings are medians over ``--reps`` interleaved rounds (every rule once per round), so that a noisy,
shared machine affects all rules alike. Three inputs are measured: ``random`` (i.i.d. Gaussian rows: the
fast Gram path), ``close`` (rows at distance ~1% of their norms, as momentums late in training: the
centred Gram path of the precision guard) and ``mimic`` (random rows, ``f`` of them duplicates of row 0).

``--floors`` also times, in the same rounds, the products no distance rule can avoid: the Gram matrix (every
rule), as the BLAS matmul ``x @ x.T`` and as the fused symmetric kernel the rules use on CPU
(``aggregators._gram``: upper triangle only, one read pass), a matrix-vector product ``w @ x`` (the final
weighted sum of MultiKrum, MDA, MoNNA, GM) and the ``n x n`` mixing matmul ``W @ x`` into a reused output
(NNM), so that a rule's ratio can be read against what it cannot avoid on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from resam_flower.aggregators import _fused, _gram, build

RULES = ["krum", "multikrum", "nnm", "gm", "mda", "monna", "bulyan"]
BYZFL = {
    "krum": lambda f: __import__("byzfl").Krum(f),
    "multikrum": lambda f: __import__("byzfl").MultiKrum(f),
    "nnm": lambda f: __import__("byzfl").NNM(f),
    "gm": lambda f: __import__("byzfl").GeometricMedian(),
    "mda": lambda f: __import__("byzfl").MDA(f),
    "monna": lambda f: __import__("byzfl").MoNNA(f),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter
STAT = statistics.median


def _median_times(fns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, float]:
    for fn in fns.values():  # warm-up (and the fused kernels' builds, see aggregators._fused)
        fn()
    _fused.wait()
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            _sync(device)
            t0 = CLOCK()
            fn()
            _sync(device)
            times[k].append(CLOCK() - t0)
    return {k: STAT(v) for k, v in times.items()}


def _component(name: str, f: int):
    if name == "nnm":
        return build("nnm+mean", f=f).pre[0]
    if name == "monna":  # the input trusted to be honest: the first, as ByzFL's default idx=0
        return build(name, f=f, idx=0)
    return build(name, f=f)


def _floors(x: torch.Tensor) -> dict[str, Callable[[], object]]:
    n = x.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
    mixing = torch.full((n, n), 1.0 / n, dtype=x.dtype, device=x.device)
    out = torch.empty_like(x)
    fns = {"floor x @ x.T": lambda: x @ x.T}
    if _gram.usable(x) is None and _gram.kernel(n, x.dtype) is not None:
        fns["floor fused Gram"] = lambda: _gram.gram(x)  # the rules' own Gram (aggregators._gram)
    return fns | {
        "floor w @ x": lambda: w @ x,
        "floor W @ x (reused out)": lambda: torch.mm(mixing, x, out=out),
    }


def _input(kind: str, n: int, d: int, f: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    if kind == "close":
        x = torch.randn(d, generator=g, dtype=dtype) + 0.01 * x
    elif kind == "mimic":
        x[n - f :] = x[0]
    return x.to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--f", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--byzfl-reps", type=int, default=3)
    ap.add_argument("--no-byzfl", action="store_true", help="skip the ByzFL 0.0.11 comparison")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--inputs", default="random,close,mimic", help="which inputs to measure")
    ap.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "process"],
        help="process: CPU time of this process (with --threads 1, insensitive to other load on the machine)",
    )
    ap.add_argument("--stat", default="median", choices=["median", "min"], help="min: best of the rounds")
    ap.add_argument("--floors", action="store_true", help="also time x @ x.T, w @ x and W @ x (see doc)")
    args = ap.parse_args()
    global CLOCK, STAT
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    STAT = min if args.stat == "min" else statistics.median
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rules = [r for r in args.rules.split(",") if r]
    n, d, f = args.n, args.d, args.f
    env = {k: os.environ[k] for k in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS") if k in os.environ}
    print(
        f"n={n} d={d:,} f={f} {args.dtype} {device} threads={torch.get_num_threads()} clock={args.clock} "
        f"stat={args.stat} isa={_fused.capability()} "
        f"env={env} load={os.getloadavg()[0]:.1f}"
    )
    for kind in args.inputs.split(","):
        x = _input(kind, n, d, f, dtype, device)
        comps = {r: _component(r, f) for r in rules if not (r == "bulyan" and n < 4 * f + 3)}
        fns: dict[str, Callable[[], object]] = {"read pass": lambda x=x: x.sum(0)}
        fns |= {r: (lambda c=c, x=x: c(x)) for r, c in comps.items()}
        if args.floors:
            fns |= _floors(x)
        ours = _median_times(fns, args.reps, device)
        base = ours["read pass"]
        theirs: dict[str, float] = {}
        if kind == "random" and not args.no_byzfl:
            ref = {r: BYZFL[r](f) for r in comps if r in BYZFL}
            theirs = _median_times(
                {"read pass": lambda x=x: x.sum(0)} | {r: (lambda a=a, x=x: a(x)) for r, a in ref.items()},
                args.byzfl_reps,
                device,
            )
            theirs = {k: v / theirs["read pass"] for k, v in theirs.items()}
        print(f"\n[{kind}] read pass {base * 1e3:.2f} ms")
        print(f"{'rule':10s} {'ours':>8s} {'byzfl':>8s} {'speedup':>8s}  distances")
        for r, c in comps.items():
            mine = ours[r] / base
            other = theirs.get(r)
            extra = f"{other:7.1f}x {other / mine:7.1f}x" if other else f"{'-':>8s} {'-':>8s}"
            print(f"{r:10s} {mine:7.2f}x {extra}  {c.last_info.get('distances')}")
        for k in (k for k in ours if k.startswith("floor")):
            print(f"{k:26s} {ours[k] / base:7.2f}x")


if __name__ == "__main__":
    main()
