"""Speed of the coordinate-wise rules (CWMed, CWTM, MeaMed) relative to one read pass ``x.sum(0)``.

Usage::

    .venv/bin/python benchmarks/coordinatewise_kernels.py                    # n=20, d=1e6, f=4, float32
    .venv/bin/python benchmarks/coordinatewise_kernels.py --n 50 --f 10 --dtype float64 --peers

Each figure is the median over ``--reps`` calls of ``time(rule) / time(x.sum(0))``, the read pass being
timed right before each call (best of two) so that both see the same machine load. Rule calls include
the non-finite-row screen every rule runs first (``_linalg.finite_rows``); "kernel only" rows leave it
out. ``--peers`` adds the ``method="sort"`` path, torch built-ins and ByzFL (if installed).
``--clock process`` times CPU seconds of all threads instead of wall seconds: steadier on a shared
machine, but it also counts threads that spin idle (OpenMP) and hides a lack of parallelism.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from resam_flower.aggregators._linalg import finite_rows
from resam_flower.aggregators.meamed import MeanAroundMedian, mean_around_median
from resam_flower.aggregators.median import CoordinateWiseMedian, coordinate_wise_median
from resam_flower.aggregators.trimmed_mean import CoordinateWiseTrimmedMean, coordinate_wise_trimmed_mean


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


_CLOCK = time.perf_counter


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t = _CLOCK()
    fn()
    _sync(device)
    return _CLOCK() - t


def ratio(fn: Callable[[], object], x: torch.Tensor, reps: int) -> tuple[float, float]:
    """Median of ``time(fn) / time(x.sum(0))`` over ``reps`` calls, and the median read-pass time (s)."""
    fn()  # warm-up (plans are cached, allocator primed)
    ratios, bases = [], []
    for _ in range(reps):
        base = min(_timed(lambda: x.sum(0), x.device) for _ in range(2))
        ratios.append(_timed(fn, x.device) / base)
        bases.append(base)
    return statistics.median(ratios), statistics.median(bases)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--d", type=int, default=1_000_000)
    p.add_argument("--f", type=int, default=4)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--peers", action="store_true", help="also time torch built-ins and ByzFL")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="process: CPU time of all threads (steadier when other jobs share the cores)")
    a = p.parse_args()
    global _CLOCK
    _CLOCK = time.process_time if a.clock == "process" else time.perf_counter
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    x = torch.randn(a.n, a.d, dtype=getattr(torch, a.dtype), device=device)
    f = a.f
    rules: dict[str, Callable[[], object]] = {}
    for cls in (CoordinateWiseMedian, CoordinateWiseTrimmedMean, MeanAroundMedian):
        rule = cls(f)
        rules[rule.name] = lambda rule=rule: rule(x)
    # The same without the rules' non-finite-row screen (``_linalg.finite_rows``), and the screen alone.
    rules["cwmed kernel only"] = lambda: coordinate_wise_median(x)
    rules["cwtm kernel only"] = lambda: coordinate_wise_trimmed_mean(x, f)
    rules["meamed kernel only"] = lambda: mean_around_median(x, f)
    rules["finite_rows screen"] = lambda: finite_rows(x)
    if a.peers:
        for cls in (CoordinateWiseMedian, CoordinateWiseTrimmedMean, MeanAroundMedian):
            rule = cls(f, method="sort")
            rules[f"{rule.name} [method=sort]"] = lambda rule=rule: rule(x)
        k = a.n // 2 + 1
        rules["torch.median(x, 0)"] = lambda: torch.median(x, 0)
        rules["x.sort(0)"] = lambda: x.sort(0)
        rules[f"x.kthvalue({k}, 0)"] = lambda: x.kthvalue(k, 0)
        try:
            import byzfl

            for peer in (byzfl.Median(), byzfl.TrMean(a.f), byzfl.Meamed(a.f)):
                rules[f"byzfl.{type(peer).__name__}"] = lambda peer=peer: peer(x)
        except ImportError:
            pass
    print(f"n={a.n} d={a.d} f={a.f} {a.dtype} on {device} ({torch.get_num_threads()} threads), "
          f"median of {a.reps}, {a.clock} clock")
    for label, fn in rules.items():
        r, base = ratio(fn, x, a.reps)
        print(f"  {label:<26} {r:6.1f}x   (read pass {base * 1e3:.2f} ms)", flush=True)


if __name__ == "__main__":
    main()
