"""Run an experiment in a child process, kill it with SIGKILL once a checkpoint exists, and resume it.

Used by ``test_checkpoint.py`` (in-process grid) and ``test_determinism.py`` (Ray simulation). The child is
started in its own session so that the kill reaches everything it spawned (Ray's processes included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, logging, sys
import torch
cfg, backend, delay = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
logging.getLogger("flwr").setLevel(logging.ERROR)
torch.set_num_threads(1)  # bit-identity holds at a fixed intra-op thread count
if backend == "inline":
    from resam_flower.app.config import ExperimentConfig
    from resam_flower.app.server_app import run_experiment
    from resam_flower.app.worker import make_client_app
    from tests.reliability.inline_grid import InlineGrid
    c = ExperimentConfig.from_run_config(cfg)
    run_experiment(InlineGrid(make_client_app(), c.num_clients, delay=delay), c)
else:
    from resam_flower.simulation import simulate
    from resam_flower.strategies.checkpoint import stable_simulation_node_ids
    with stable_simulation_node_ids(cfg["seed"]):
        simulate(cfg)
"""


def checkpoint_round(path: Path) -> int:
    """Round of the checkpoint at ``path`` (0 if there is none yet)."""
    if not path.exists():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["round"])


def run_and_kill(
    cfg: dict, *, kill_after_round: int, backend: str = "inline", delay: float = 0.0, timeout: float = 300.0
) -> int:
    """Start the run in a child process; SIGKILL its whole session as soon as the checkpoint of round
    ``>= kill_after_round`` exists. Return the checkpoint's round at the time of the kill."""
    ckpt = Path(cfg["results-dir"]) / cfg["run-name"] / "checkpoint.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(cfg), backend, str(delay)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while (rnd := checkpoint_round(ckpt)) < kill_after_round:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the run ended before its checkpoint of round {kill_after_round}: "
                    f"{proc.stderr.read().decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no checkpoint of round {kill_after_round} after {timeout}s")
            time.sleep(0.02)
    finally:
        _kill_session(proc)
    return rnd


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stderr.close()

