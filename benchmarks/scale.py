"""1,000 virtual clients on Flower's simulation engine: time per round and peak memory against client count.

Usage::

    .venv/bin/python benchmarks/scale.py [--clients 250 500 1000] [--fraction 0.1] [--rounds 12]
        [--num-byzantine 3] [--num-test 2000] [--json out.json]

Each client count runs in a fresh subprocess: ``simulate()`` (Ray backend, one CPU per virtual client, as
many workers as cores) on MNIST partitioned IID over ``N`` clients, the reference CNN (d = 431,080), RESAM
workers (β = 0.9, batch 32), ``nnm+cwtm`` with ALIE from ``num-byzantine`` nodes, and ``fraction`` of the
clients sampled each round. Measured in that subprocess:

* time per round: from the start of ``configure_train`` to the end of ``aggregate_train`` (recorded by
  wrappers: sampling, sending, every sampled worker's step, screening, aggregation); the first round (Ray
  workers starting, loading MNIST and their partitions) is reported apart, the steady state as the median
  of the others;
* peak memory: a thread samples, every 0.2 s, the proportional set size (PSS, from
  ``/proc/<pid>/smaps_rollup``; shared pages are split between the processes that map them, so the sum
  is not inflated by Ray's shared-memory object store) of the process and all its descendants (Ray's GCS,
  raylet, workers) and keeps the maximum of the sum; the driver's own resident high-water mark (``VmHWM``)
  too;
* clients holding state: the number of distinct clients sampled at least once (each keeps its momentum,
  d float32 = 1.64 MiB, in its ``Context`` in the simulation process). It is replayed exactly from the
  strategy's seeded sampler.

Memory should grow linearly with the clients holding state; the fit ``peak = a + b · clients`` is printed
with ``b`` in MiB per client, next to the 1.64 MiB of one momentum.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MOMENTUM_MIB = 431_080 * 4 / 2**20


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        out += frontier
    return out


def _kib(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    """Samples the summed PSS of this process tree (MiB) until stopped; ``peak`` is the maximum."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period, self.peak, self._halt = period, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in _tree(os.getpid()))
            self.peak = max(self.peak, pss / 1024)
            self._halt.wait(self.period)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak


def clients_with_state(num_clients: int, fraction: float, rounds: int, seed: int) -> int:
    """Distinct clients sampled in ``rounds`` rounds (the strategy's ``random.Random(seed)`` sampler)."""
    rng, seen = random.Random(seed), set()
    size = min(num_clients, max(int(num_clients * fraction), 1))
    for _ in range(rounds):
        seen.update(rng.sample(range(num_clients), size))
    return len(seen)


def one(args: argparse.Namespace, num_clients: int) -> dict:
    """Run one client count in this process; return its figures."""
    import logging

    from resam_flower.simulation import simulate
    from resam_flower.strategies import ResilientAveraging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    starts: list[float] = []
    ends: list[float] = []
    configure, aggregate = ResilientAveraging.configure_train, ResilientAveraging.aggregate_train

    def timed_configure(self, *args):
        starts.append(time.perf_counter())
        return configure(self, *args)

    def timed_aggregate(self, *args):
        out = aggregate(self, *args)
        ends.append(time.perf_counter())
        return out

    ResilientAveraging.configure_train = timed_configure
    ResilientAveraging.aggregate_train = timed_aggregate
    cfg = {
        "dataset": "mnist", "model": "mnist-cnn", "num-clients": num_clients,
        "num-byzantine": args.num_byzantine, "attack": "alie", "aggregator": "nnm+cwtm", "momentum": 0.9,
        "batch-size": 32, "lr": 0.1, "num-server-rounds": args.rounds, "fraction-train": args.fraction,
        "eval-every": args.rounds, "num-test": args.num_test, "seed": 0, "results-dir": args.results_dir,
        "run-name": f"scale-{num_clients}",
    }  # fmt: skip
    mem = PeakMemory()
    mem.start()
    t0 = time.perf_counter()
    summary = simulate(cfg)
    total = time.perf_counter() - t0
    peak = mem.stop()
    durations = [b - a for a, b in zip(starts, ends, strict=True)]
    return {
        "clients": num_clients,
        "sampled_per_round": min(num_clients, max(int(num_clients * args.fraction), 1)),
        "clients_with_state": clients_with_state(num_clients, args.fraction, args.rounds, 0),
        "rounds": summary["rounds"],
        "first_round_s": durations[0],
        "s_per_round": statistics.median(durations[1:]) if len(durations) > 1 else durations[0],
        "total_s": total,
        "peak_pss_mb": peak,
        "driver_hwm_mb": _kib("/proc/self/status", "VmHWM") / 1024,
        "skipped_rounds": summary["skipped_rounds"],
        "final_test_accuracy": summary["final_test_accuracy"],
    }


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``; returns a, b and R²."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    ss = sum((y - my) ** 2 for y in ys)
    r2 = 1 - sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True)) / ss if ss else 1.0
    return a, b, r2 if n > 2 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--num-byzantine", type=int, default=3)
    ap.add_argument("--num-test", type=int, default=2000)
    ap.add_argument("--results-dir", default="/tmp/resam-scale")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(one(args, args.one)), flush=True)
        return
    rows = []
    for n in args.clients:
        cmd = [sys.executable, __file__, "--one", str(n), *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"run with {n} clients failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT ") :]))
        r = rows[-1]
        print(f"{n:5d} clients, {r['sampled_per_round']:4d}/round, {r['clients_with_state']:5d} with state: "
              f"{r['s_per_round']:6.2f} s/round (first {r['first_round_s']:.0f} s), "
              f"peak {r['peak_pss_mb']:7.0f} MiB "
              f"(driver {r['driver_hwm_mb']:.0f} MiB), run {r['total_s']:.0f} s, "
              f"acc {r['final_test_accuracy']}", flush=True)  # fmt: skip
    a, b, r2 = fit([r["clients_with_state"] for r in rows], [r["peak_pss_mb"] for r in rows])
    print(f"\npeak memory ≈ {a:.0f} MiB + {b:.2f} MiB × clients holding state (R² = {r2:.3f}); "
          f"one momentum = {MOMENTUM_MIB:.2f} MiB")  # fmt: skip
    da, db, dr2 = fit([r["clients_with_state"] for r in rows], [r["driver_hwm_mb"] for r in rows])
    print(f"simulation process alone (the nodes' contexts live there): ≈ {da:.0f} MiB + {db:.2f} MiB × "
          f"clients holding state (R² = {dr2:.3f})")  # fmt: skip
    if args.json:
        out = {"args": vars(args), "rows": rows, "fit": [a, b, r2], "driver_fit": [da, db, dr2]}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
