"""Speed and memory of every rule, pre-aggregator and common pipeline, against ByzFL 0.0.11 and Flower 1.42.

Usage::

    .venv/bin/python benchmarks/aggregators.py [--device cpu|cuda] [--n 20 --d 1000000 --f 4]
        [--repeats 5] [--byzfl-repeats 3] [--rules krum nnm+cwtm ...] [--json out.json]
        [--no-memory] [--no-byzfl] [--no-flower]

Method (printed above the table too)
------------------------------------
* One float32 input ``x`` of shape ``(n, d)``, N(0, 1), seed 0, on the device. Every contender gets the
  same values: ByzFL the same torch tensor (its torch code path), Flower numpy views of its rows.
  Conversions happen outside the timed region.
* Time: median over repeats of one call, after one warm-up call (CUDA synchronised around each call).
  ``x read pass`` = time / time of one read pass ``x.sum(0)`` on the same input. A read pass is timed right
  before every timed call (interleaved) and each ratio uses the median of those paired read passes, so that
  the drifting load of a shared machine cancels; speed-ups are ratios of these normalised times.
* ByzFL's Clipping and ARC write into their input: each of their calls gets a fresh copy, made untimed.
* Flower: the functions behind ``flwr.serverapp.strategy`` (``select_multikrum`` +
  ``aggregate_arrayrecords`` for Krum/MultiKrum, ``np.median`` of the stacked layers for FedMedian,
  ``trim_mean`` for FedTrimmedAvg, the selection / median / ``aggregate_n_closest_weights`` steps of
  Bulyan) on records whose arrays are numpy views: the deserialisation a real ``ArrayRecord`` adds is not
  counted, only the aggregation.
* Peak extra memory: CPU: a fresh subprocess per component; resident-set high-water mark (``VmHWM``,
  reset through ``/proc/self/clear_refs``) during one call, minus the resident set before it, after a
  warm-up call on a tiny input. CUDA: ``torch.cuda.max_memory_allocated`` during one call minus the memory
  allocated before it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from resam_flower.aggregators import PRE_AGGREGATORS, RULES, _fused, _gram, _linalg, build

PIPELINES = ["nnm+cwtm", "nnm+krum", "bucketing(s=2)+cwmed", "arc+nnm+cwtm"]
CASES = [*RULES, *PRE_AGGREGATORS, *PIPELINES]
PRE_PARAMS = {"bucketing": "bucketing(s=2)", "clipping": "clipping(c=1.0)"}
# Targets: max ratio to a read pass (CPU), max ratio to what a rule cannot avoid (its floor, timed in the same
# run: the Gram matrix the distance rules use, plus the final w @ x of MultiKrum), and the minimum speed-up
# over ByzFL on rules both define.
CPU_RATIO = {"nnm": 3, "cwmed": 4, "cwtm": 4, "meamed": 6, "gm": 15}
FLOOR_RATIO = 1.3
FLOORS = {"krum": ("gram",), "multikrum": ("gram", "w @ x")}
BYZFL_TARGET = {"cpu": 10.0, "cuda": 5.0}
GPU_RATIO = 10.0
BYZFL_SUBSET_LIMIT = {"mda": 20_000, "smea": 50}  # ByzFL enumerates C(n, n-f) subsets in Python


def _component(case: str, f: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Our component for ``case``; a pre-aggregator alone is taken out of a ``pre+mean`` pipeline."""
    if case in PRE_AGGREGATORS:
        return build(f"{PRE_PARAMS.get(case, case)}+mean", f=f).pre[0]
    if case == "monna":  # the input trusted to be honest: the first, as ByzFL's default idx=0
        return build(case, f=f, idx=0)
    return build(case, f=f)


def _byzfl(case: str, n: int, f: int) -> tuple[Callable[[torch.Tensor], Any], bool] | None:
    """ByzFL's equivalent of ``case`` and whether it writes into its input; None if it has none."""
    import byzfl

    single: dict[str, Callable[[], Any]] = {
        "mean": byzfl.Average, "cwmed": byzfl.Median, "cwtm": lambda: byzfl.TrMean(f=f),
        "meamed": lambda: byzfl.Meamed(f=f), "gm": byzfl.GeometricMedian, "krum": lambda: byzfl.Krum(f=f),
        "multikrum": lambda: byzfl.MultiKrum(f=f), "mda": lambda: byzfl.MDA(f=f),
        "cc": byzfl.CenteredClipping, "monna": lambda: byzfl.MoNNA(f=f), "caf": lambda: byzfl.CAF(f=f),
        "smea": lambda: byzfl.SMEA(f=f), "nnm": lambda: byzfl.NNM(f=f),
        "bucketing": lambda: byzfl.Bucketing(s=2), "clipping": lambda: byzfl.Clipping(c=1.0),
        "arc": lambda: byzfl.ARC(f=f),
    }
    stages = [s.split("(")[0] for s in case.split("+")]
    if any(s not in single for s in stages):
        return None
    limit = BYZFL_SUBSET_LIMIT.get(stages[-1])
    if limit is not None and math.comb(n, n - f) > limit:
        return None
    objs = [single[s]() for s in stages]

    def run(x: torch.Tensor) -> Any:
        for o in objs:
            x = o(x)
        return x

    return run, any(s in ("clipping", "arc") for s in stages)


def _flower(case: str, n: int, f: int) -> Callable[[list], Any] | None:
    """Flower 1.42's aggregation behind the strategy of the same name, on a list of numpy arrays."""
    import numpy as np
    from flwr.serverapp.strategy import bulyan as fb
    from flwr.serverapp.strategy import fedtrimmedavg as ft
    from flwr.serverapp.strategy import multikrum as fm
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    def krum_like(m: int) -> Callable[[list], Any]:
        return lambda recs: aggregate_arrayrecords(fm.select_multikrum(recs, f, m), "num-examples")

    def bulyan(recs: list) -> Any:
        theta = n - 2 * f
        chosen = fm.select_multikrum(recs, f, theta)
        arrays = [c["w"].to_numpy_ndarrays() for c in chosen]
        med = [np.median(a, axis=0) for a in zip(*arrays, strict=True)]
        return fb.aggregate_n_closest_weights(med, arrays, theta - 2 * f)

    table: dict[str, Callable[[list], Any]] = {
        "krum": krum_like(1), "multikrum": krum_like(n - f), "bulyan": bulyan,
        "cwmed": lambda recs: np.median(np.stack([r.layer for r in recs]), axis=0),
        "cwtm": lambda recs: ft.trim_mean(np.stack([r.layer for r in recs]), (f + 0.5) / n),
    }
    return table.get(case)


class _FakeArray:
    def __init__(self, a: Any) -> None:
        self.a = a

    def numpy(self) -> Any:
        return self.a


class _FakeArrayRecord(dict):
    def to_numpy_ndarrays(self, keep_input: bool = True) -> list:
        return [v.a for v in self.values()]


class _FakeReply(dict):
    """What Flower's functions read of a reply ``RecordDict``: one ArrayRecord, one MetricRecord."""

    def __init__(self, layer: Any) -> None:
        super().__init__(w=_FakeArrayRecord(w=_FakeArray(layer)))
        self.layer = layer
        self.array_records = {"w": self["w"]}
        self.metric_records = {"m": {"num-examples": 1}}


def _clock(fn: Callable, a: Any, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn(a)
    sync()
    return time.perf_counter() - t0


def _timed(
    fn: Callable, arg: Callable[[], Any], repeats: int, sync: Callable[[], None], x: torch.Tensor
) -> tuple[float, float]:
    """Median time of ``fn(arg())`` and median time of the read passes ``x.sum(0)`` interleaved with it.

    After the warm-up call, waits for the fused kernels it started building in the background (their
    build is announced and cached, see ``resam_flower.aggregators._fused``) and warms up again.
    """
    fn(arg())
    _fused.wait()
    fn(arg())
    times, reads = [], []
    for _ in range(repeats):
        a = arg()
        reads.append(_clock(lambda t: t.sum(0), x, sync))
        times.append(_clock(fn, a, sync))
    return statistics.median(times), statistics.median(reads)


def _input(n: int, d: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g).to(device)


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def probe_memory(case: str, n: int, d: int, f: int, device: str) -> int:
    """Peak bytes allocated by one call beyond what was resident before it (see the module docstring)."""
    comp = _component(case, f)
    comp(_input(n, 64, device))  # imports, lazy initialisation
    comp.reset()  # stateful rules (centered clipping) must not carry the warm-up's dimension
    x = _input(n, d, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        comp(x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status("VmRSS")
    comp(x)
    return _status("VmHWM") - base


def _memory(case: str, args: argparse.Namespace) -> int | str:
    if args.device == "cuda":
        return probe_memory(case, args.n, args.d, args.f, "cuda")
    cmd = [sys.executable, __file__, "--probe", case, "--n", str(args.n), "--d", str(args.d),
           "--f", str(args.f), "--threads", str(torch.get_num_threads())]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    if res.returncode:
        return "error: " + (res.stderr.strip().splitlines() or ["?"])[-1][:80]
    return int(res.stdout.strip().splitlines()[-1])


def floors(x: torch.Tensor, repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median times of the products the distance rules cannot avoid, as the rules compute them here: the
    Gram matrix (the fused symmetric kernel of ``aggregators._gram`` where it runs, else ``x @ x.T``) and
    a matrix-vector product ``w @ x``; each over the read passes interleaved with it."""
    w = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=x.dtype, device=x.device)
    out = {}
    for name, fn in (("gram", _linalg.gram), ("w @ x", lambda t: w @ t)):
        t, r = _timed(fn, lambda: x, repeats, sync, x)
        out[name] = t / r
    return out


def _verdict(case: str, ratio: float | None, speedup: float | None, device: str,
             floor: dict[str, float] | None = None) -> str:
    fails, checked = [], False
    bound = (GPU_RATIO if case in RULES else None) if device == "cuda" else CPU_RATIO.get(case)
    if bound is not None and ratio is not None:
        checked = True
        if ratio > bound:
            fails.append(f"{ratio:.1f}x > {bound:g}x read")
    if floor and case in FLOORS and ratio is not None and device == "cpu":
        checked = True
        base = sum(floor[k] for k in FLOORS[case])
        if ratio > FLOOR_RATIO * base:
            fails.append(f"{ratio / base:.2f}x > {FLOOR_RATIO:g}x its floor")
    if case in RULES and case != "mean" and speedup is not None:
        checked = True
        if speedup < BYZFL_TARGET[device]:
            fails.append(f"{speedup:.1f}x < {BYZFL_TARGET[device]:g}x ByzFL")
    if not checked:
        return "—"
    return "PASS" if not fails else "FAIL (" + "; ".join(fails) + ")"


def run_case(case: str, x: torch.Tensor, args: argparse.Namespace,
             floor: dict[str, float] | None = None) -> dict[str, Any]:
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    n, f = x.shape[0], args.f
    row: dict[str, Any] = {"case": case}
    try:
        comp = _component(case, f)
        row["ours_s"], row["read_s"] = _timed(comp, lambda: x, args.repeats, sync, x)
        row["ratio"] = row["ours_s"] / row["read_s"]
    except Exception as exc:  # a module not written yet, or broken: report it, go on
        row["error"] = f"{type(exc).__name__}: {exc}"[:120]
        return row
    bz = None if args.no_byzfl else _byzfl(case, n, f)
    if bz is not None:
        fn, writes = bz
        arg = (lambda: x.clone()) if writes else (lambda: x)
        row["byzfl_s"], read_b = _timed(fn, arg, args.byzfl_repeats, sync, x)
        row["vs_byzfl"] = (row["byzfl_s"] / read_b) / row["ratio"]
    fl = None if args.no_flower else _flower(case, n, f)
    if fl is not None:
        recs = [_FakeReply(r) for r in x.cpu().numpy()]
        row["flower_s"], read_f = _timed(fl, lambda: recs, args.byzfl_repeats, sync, x)
        row["vs_flower"] = (row["flower_s"] / read_f) / row["ratio"]
    if not args.no_memory:
        mem = _memory(case, args)
        row["peak_extra_bytes"] = mem
    if floor and case in FLOORS:
        row["vs_floor"] = row["ratio"] / sum(floor[k] for k in FLOORS[case])
    row["verdict"] = _verdict(case, row["ratio"], row.get("vs_byzfl"), args.device, floor)
    return row


def markdown(rows: list[dict[str, Any]], header: str, input_bytes: int) -> str:
    def ms(v: float | None) -> str:  # under 1 ms: 3 significant digits (a fused rule at small d: < 0.05)
        return "—" if v is None else f"{v * 1e3:.1f}" if v >= 1e-3 else f"{v * 1e3:.3g}"

    def times(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}x"

    def mem(v: Any) -> str:
        if v is None or isinstance(v, str):
            return v or "—"
        return f"{v / 2**20:.0f} MiB ({v / input_bytes:.2f}x input)"

    out = [header, "",
           "| component | ours (ms) | x read pass | ByzFL (ms) | speed-up vs ByzFL | Flower (ms) "
           "| speed-up vs Flower | peak extra memory | targets |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | {r['error']} | | | | | | | |")
            continue
        out.append(f"| {r['case']} | {ms(r['ours_s'])} | {times(r['ratio'])} | {ms(r.get('byzfl_s'))} "
                   f"| {times(r.get('vs_byzfl'))} | {ms(r.get('flower_s'))} | {times(r.get('vs_flower'))} "
                   f"| {mem(r.get('peak_extra_bytes'))} | {r['verdict']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--d", type=int, default=None, help="1,000,000 on CPU, 11,000,000 on CUDA")
    ap.add_argument("--f", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--byzfl-repeats", type=int, default=3, help="ByzFL and Flower (seconds per call)")
    ap.add_argument("--rules", nargs="+", default=CASES, metavar="CASE")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-byzfl", action="store_true")
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.d = args.d or (11_000_000 if args.device == "cuda" else 1_000_000)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(probe_memory(args.probe, args.n, args.d, args.f, args.device))
        return 0
    from tqdm import tqdm

    x = _input(args.n, args.d, args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    read = _timed(lambda t: t.sum(0), lambda: x, max(args.repeats, 9), sync, x)[0]
    dev = torch.cuda.get_device_name() if args.device == "cuda" else (
        f"{cpu_name()}, {torch.get_num_threads()} threads, {_fused.capability()}, fused kernels "
        f"{'on' if _fused.available() else 'OFF (torch network)'}")
    header = (f"n={args.n}, d={args.d:,}, f={args.f}, float32, {dev}, torch {torch.__version__}; "
              f"read pass x.sum(0) = {read * 1e3:.2f} ms at start; median of {args.repeats} calls (ours), "
              f"{args.byzfl_repeats} (ByzFL, Flower), each after a warm-up call. "
              f"Memory: {'CUDA max_memory_allocated' if args.device == 'cuda' else 'RSS high-water'} "
              f"beyond the {x.numel() * 4 / 2**20:.0f} MiB input.")
    floor = floors(x, args.repeats, sync) if args.device == "cpu" else None
    if floor:
        how = "fused kernel" if _gram.usable(x) is None else "x @ x.T"
        header += (f" Floors (x read pass): the rules' Gram {floor['gram']:.2f}x ({how}), "
                   f"w @ x {floor['w @ x']:.2f}x; Krum's floor is the Gram, MultiKrum's the Gram + w @ x.")
    rows = []
    for case in (bar := tqdm(args.rules, desc="aggregators", file=sys.stderr)):
        bar.set_postfix_str(case)
        rows.append(run_case(case, x, args, floor))
    table = markdown(rows, header, x.numel() * 4)
    print(table)
    if args.json:
        with open(args.json, "w") as fh:
            record = {"header": header, "read_pass_s": read, "floors": floor, "args": vars(args)}
            json.dump({**record, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
