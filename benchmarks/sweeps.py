"""The sweep benchmark: cells per hour on the 8 MNIST-CNN cells of simulations/bench_sweeps_mnist.toml.

Side by side, one after the other, from this one script:
  (a) ``resam sweep FILE --engine ray``                 (one cell at a time on Flower's Ray simulation)
  (b) ``resam sweep FILE --engine inprocess --jobs 2``  (2 cells at once, in-process engine)
  (c) ByzFL 0.0.11's ``byzfl.benchmark.benchmark.run_benchmark(nb_jobs=2)`` on the same grid (its CNN,
      MNIST, 10 honest + 3 ALIE tau = 1.5, TrMean with/without NNM, beta {0, 0.9}, 2 seeds, batch 32,
      lr 0.1, weight decay 1e-4, 100 steps, IID split among the honest clients, the whole training set, no
      validation), reading MNIST from torchvision's raw folder, written here from resam's cached MNIST.

Each command is timed as a whole (imports, Ray start, process start included); cells per hour =
8 x 3600 / wall. Memory: the resident set of every process of the command's tree, sampled from /proc every
0.2 s: the peak of the largest single process (one job: a cell process, a Pool worker, a Ray actor or the
driver) and the peak of the tree's sum (shared pages counted in each process that maps them).

    .venv/bin/python benchmarks/sweeps.py --results /tmp/bench-sweeps [--only ray inprocess byzfl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent
SWEEP = ROOT / "simulations" / "bench_sweeps_mnist.toml"
CELLS = 8
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(root: int) -> dict[int, int]:
    """pid -> resident bytes of ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in rss:
            out[pid] = rss[pid]
        todo.extend(children.get(pid, []))
    return out


def timed(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak RSS of one process and of the whole tree (MiB), return code."""
    peak_one = peak_sum = 0
    stop = threading.Event()
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)

        def sample():
            nonlocal peak_one, peak_sum
            while not stop.is_set():
                tree = _tree(proc.pid)
                if tree:
                    peak_one = max(peak_one, max(tree.values()))
                    peak_sum = max(peak_sum, sum(tree.values()))
                stop.wait(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    return {"wall_s": wall, "peak_job_mib": peak_one / 2**20, "peak_tree_mib": peak_sum / 2**20, "rc": rc}


def wait_quiet(limit: float, max_wait: float) -> None:
    t0 = time.time()
    while os.getloadavg()[0] >= limit and time.time() - t0 < max_wait:
        print(f"load average {os.getloadavg()[0]:.2f} >= {limit}: waiting", flush=True)
        time.sleep(20)
    print(f"load average {os.getloadavg()} at the start", flush=True)


def write_torchvision_mnist(folder: Path) -> None:
    """torchvision's ``MNIST/raw`` idx files (train = the pickle's train + valid, 60,000; test 10,000)."""
    import numpy as np

    from resam_flower.data.mnist import load_mnist_arrays  # noqa: PLC0415

    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    a = load_mnist_arrays()
    x_tr = np.concatenate([a["train_images"], a["valid_images"]])
    y_tr = np.concatenate([a["train_labels"], a["valid_labels"]])
    for name, x, y in (("train", x_tr, y_tr), ("t10k", a["test_images"], a["test_labels"])):
        (raw / f"{name}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(x), 28, 28) + x.astype(np.uint8).tobytes()
        )
        labels = struct.pack(">II", 2049, len(y)) + y.astype(np.uint8).tobytes()
        (raw / f"{name}-labels-idx1-ubyte").write_bytes(labels)


def byzfl_config(data: Path, results: Path, steps: int) -> dict:
    return {
        "benchmark_config": {
            "training_algorithm": {"name": "DSGD", "parameters": {}},
            "nb_steps": steps,
            "device": "cpu",
            "training_seed": 0,
            "nb_training_seeds": 2,
            "nb_honest_clients": 10,
            "f": [3],
            "data_distribution_seed": 0,
            "nb_data_distribution_seeds": 1,
            "data_distribution": [{"name": "iid", "distribution_parameter": [1.0]}],
            "size_train_set": 1.0,
        },
        "model": {
            "name": "cnn_mnist",
            "dataset_name": "mnist",
            "nb_labels": 10,
            "loss": "NLLLoss",
            "learning_rate": 0.1,
            "learning_rate_decay": 1.0,
            "milestones": [],
        },
        "aggregator": [{"name": "TrMean", "parameters": {}}],
        "pre_aggregators": [[{"name": "NNM", "parameters": {}}], []],
        "honest_clients": {"momentum": [0.0, 0.9], "weight_decay": 1e-4, "batch_size": 32},
        "attack": [{"name": "ALittleIsEnough", "parameters": {"tau": 1.5}}],
        "evaluation_and_results": {
            "evaluation_delta": 1000,
            "batch_size_evaluation": 128,
            "evaluate_on_test": True,
            "store_per_client_metrics": False,
            "store_models": False,
            "data_folder": str(data),
            "results_directory": str(results),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="/tmp/bench-sweeps", help="outside the work tree")
    p.add_argument("--only", nargs="+", default=["ray", "inprocess", "byzfl"])
    p.add_argument("--steps", type=int, default=100, help="ByzFL's nb_steps (the sweep file says 100 rounds)")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--max-wait", type=float, default=600)
    args = p.parse_args()
    root = Path(args.results).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    resam = str(VENV / "resam")
    runs = {
        "ray": (
            "(a) sequential Ray sweep (`--engine ray`)",
            [
                resam,
                "sweep",
                str(SWEEP),
                "--engine",
                "ray",
                "--results",
                str(root / "ray"),
                "--no-report",
                "--no-progress",
            ],
            None,
        ),
        "inprocess": (
            "(b) `--jobs 2`, in-process engine",
            [
                resam,
                "sweep",
                str(SWEEP),
                "--engine",
                "inprocess",
                "--jobs",
                "2",
                "--results",
                str(root / "inprocess"),
                "--no-report",
                "--no-progress",
            ],
            None,
        ),
    }
    if "byzfl" in args.only:
        data = root / "byzfl-data"
        write_torchvision_mnist(data)
        work = root / "byzfl"
        work.mkdir()
        (work / "config.json").write_text(
            json.dumps(byzfl_config(data, work / "results", args.steps), indent=2)
        )
        env = dict(os.environ, OMP_NUM_THREADS="1")  # one intra-op thread per job, as resam's --jobs 2
        runs["byzfl"] = (
            "(c) ByzFL 0.0.11 `run_benchmark(nb_jobs=2)`",
            [
                sys.executable,
                "-c",
                "from byzfl.benchmark.benchmark import run_benchmark; run_benchmark(nb_jobs=2)",
            ],
            env,
        )
    wait_quiet(args.max_load, args.max_wait)
    rows = {}
    for key in args.only:
        label, cmd, env = runs[key]
        cwd = root / "byzfl" if key == "byzfl" else ROOT
        print("$", " ".join(cmd), flush=True)
        r = timed(cmd, cwd, env, log=root / f"{key}.log")
        r["load_after"] = os.getloadavg()[0]
        rows[key] = (label, r)
        print(key, json.dumps(r), flush=True)
    (root / "timings.json").write_text(json.dumps({k: r for k, (_, r) in rows.items()}, indent=2))
    base = rows.get("ray", (None, None))[1]
    print(
        "\n| | sweep wall | cells per hour | vs (a) | peak RSS, largest process | peak RSS, whole tree | rc |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in rows.values():
        cph = CELLS * 3600 / r["wall_s"]
        vs = f"{base['wall_s'] / r['wall_s']:.2f}x" if base else "-"
        print(
            f"| {label} | {r['wall_s']:.1f} s | {cph:.0f} | {vs} | {r['peak_job_mib']:,.0f} MiB "
            f"| {r['peak_tree_mib']:,.0f} MiB | {r['rc']} |"
        )


if __name__ == "__main__":
    main()
