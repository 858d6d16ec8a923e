"""Sweeps on a Ray cluster (``resam sweep --ray-address``): a local two-node cluster on the loopback runs a
tiny sweep over both nodes; the results, written on the driver, equal the sequential in-process sweep's cell
for cell, and a rerun does no work. The cluster is this test's own (its ports, its temp dir, its process
groups) and is stopped at the end; ``ray stop`` is not used, as it stops every Ray on the machine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pytest

from resam_flower.experiments import Sweep, run_sweep
from tests.experiments.conftest import write_sweep_file

RAY = str(Path(sys.executable).with_name("ray"))

TINY = {
    "dataset": "digits",
    "model": "mlp",
    "num-clients": 5,
    "num-byzantine": 1,
    "num-server-rounds": 2,
    "eval-every": 2,
}


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_for_port(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}: see {proc.args}")
        with closing(socket.socket()) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"no Ray head on port {port}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop one ``ray start --block`` and every process it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # what outlived the leader (workers exiting)
        os.killpg(proc.pid, signal.SIGKILL)


def _nodes_alive(address: str, n: int, deadline: float) -> None:
    code = (
        "import ray, sys\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "print(sum(1 for x in ray.nodes() if x['Alive']))\n"
    )
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(1)
    raise TimeoutError(f"the cluster at {address} has not {n} nodes")


@pytest.fixture
def two_node_cluster():
    """``ray start --head`` plus a second node on 127.0.0.1, one CPU each; yields the head's address."""
    temp = tempfile.mkdtemp(prefix="rc")  # short: Ray's socket paths live under it
    head_port, client_port, *ports = free_ports(14)
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []

    def start(args: list[str], node: int) -> subprocess.Popen:
        p = ports[6 * node : 6 * node + 6]
        proc = subprocess.Popen(
            [
                RAY,
                "start",
                *args,
                *common,
                "--temp-dir",
                os.path.join(temp, f"n{node}"),
                "--node-manager-port",
                str(p[0]),
                "--object-manager-port",
                str(p[1]),
                "--dashboard-agent-listen-port",
                str(p[2]),
                "--dashboard-agent-grpc-port",
                str(p[3]),
                "--runtime-env-agent-port",
                str(p[4]),
                "--metrics-export-port",
                str(p[5]),
            ],
            stdout=open(os.path.join(temp, f"n{node}.log"), "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    address = f"127.0.0.1:{head_port}"
    try:
        head = start(
            [
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(head_port),
                "--ray-client-server-port",
                str(client_port),
                "--include-dashboard",
                "false",
            ],
            0,
        )
        _wait_for_port(head_port, head, time.time() + 120)
        start(["--address", address, "--node-ip-address", "127.0.0.1"], 1)
        _nodes_alive(address, 2, time.time() + 120)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_on_a_two_node_ray_cluster(tmp_path, two_node_cluster, capsys, monkeypatch):
    from resam_flower.cli import main
    from resam_flower.experiments import runner as runner_module

    reported: list[tuple[str, int]] = []

    class Recording(runner_module.CellBars):  # the per-cell round reports that reach the driver
        def report(self, name, server_round, accuracy=None):
            reported.append((name, server_round))
            super().report(name, server_round, accuracy)

    monkeypatch.setattr(runner_module, "CellBars", Recording)

    s = Sweep("c", TINY, {"aggregator": ["cwtm", "nnm+cwtm"], "momentum": [0.0, 0.9]})
    seq = run_sweep(s, tmp_path / "seq", progress=False, engine="inprocess")  # one by one, in this process
    assert [r.status for r in seq] == ["done"] * 4

    toml = tmp_path / "c.toml"
    write_sweep_file(toml, "c", TINY, 'aggregator = ["cwtm", "nnm+cwtm"]\nmomentum = [0.0, 0.9]\n')
    argv = ["sweep", str(toml), "--results", str(tmp_path / "ray"), "--ray-address", two_node_cluster]
    argv += ["--no-report", "--no-progress"]
    assert main(argv) == 0
    nodes = set()
    for r in seq:
        cell_dir = tmp_path / "ray" / "c" / r.cell.name
        summary = json.loads((cell_dir / "summary.json").read_text())
        assert summary["final_model_sha256"] == r.summary["final_model_sha256"], r.cell.name
        assert summary["final_test_loss"] == r.summary["final_test_loss"]
        assert summary["config"]["results-dir"] == str(tmp_path / "ray" / "c")  # the driver's folder
        config = json.loads((cell_dir / "config.json").read_text())
        assert config["results-dir"] == summary["config"]["results-dir"]
        nodes.add(json.loads((cell_dir / "node.json").read_text())["node_id"])
    assert len(nodes) == 2  # the cells ran on both nodes
    rounds = TINY["num-server-rounds"]
    assert sorted(reported) == sorted((r.cell.name, k) for r in seq for k in range(1, rounds + 1))

    capsys.readouterr()
    assert main(argv) == 0  # rerun: nothing is redone
    assert "0 cells run, 4 already finished, 0 failed" in capsys.readouterr().out
    again = run_sweep(s, tmp_path / "ray", progress=False, ray_address=two_node_cluster)
    assert [r.status for r in again] == ["cached"] * 4


def test_a_tasks_files_are_written_on_the_driver_with_the_drivers_folder(tmp_path):
    from resam_flower.experiments.cluster import RayTasks

    s = Sweep("c", TINY, {"aggregator": ["cwtm"]})
    cell = s.cells(tmp_path)[0]
    node_dir = "/tmp/resam-cell-xyz"
    summary = {"final_model_sha256": "ab", "config": {**cell.config, "results-dir": node_dir}}
    value = {
        "status": "done",
        "error": "",
        "timing": {"total_s": 1.0},
        "line": "[resam] done",
        "files": {
            "summary.json": json.dumps(summary),
            "config.json": json.dumps({**cell.config, "results-dir": node_dir}),
            "metrics.csv": "round,valid\n1,5\n",
            "checkpoint.pt": "not sent back",
        },
        "node_id": "n1",
        "hostname": "h",
    }
    run_dir = tmp_path / "c" / cell.name
    run_dir.mkdir(parents=True)
    (run_dir / "error.txt").write_text("an earlier failure")
    result, line = RayTasks("auto", 1, False).finish(cell, value)
    assert result.status == "done" and result.node == "n1" and line == "[resam] done"
    assert result.summary["final_model_sha256"] == "ab"
    assert result.summary["config"]["results-dir"] == str(tmp_path / "c")
    assert json.loads((run_dir / "config.json").read_text())["results-dir"] == str(tmp_path / "c")
    assert (run_dir / "metrics.csv").read_text() == "round,valid\n1,5\n"
    assert json.loads((run_dir / "node.json").read_text())["node_id"] == "n1"
    assert not (run_dir / "error.txt").exists() and not (run_dir / "checkpoint.pt").exists()
    from resam_flower.experiments import is_finished

    assert is_finished(cell)["final_model_sha256"] == "ab"

    failed = {**value, "status": "failed", "error": "boom", "line": "FAILED; see {run_dir}/error.txt"}
    failed["files"] = {"error.txt": "Traceback: boom"}
    result, line = RayTasks("auto", 1, False).finish(s.cells(tmp_path / "f")[0], failed)
    f_dir = tmp_path / "f" / "c" / cell.name
    assert result.status == "failed" and result.error == "boom" and line == f"FAILED; see {f_dir}/error.txt"
    assert (f_dir / "error.txt").read_text() == "Traceback: boom" and not (f_dir / "summary.json").exists()


def test_ray_address_runs_the_in_process_engine_only(tmp_path, capsys):
    from resam_flower.cli import main

    s = Sweep("c", TINY, {"aggregator": ["cwtm"]})
    with pytest.raises(ValueError, match="in-process engine"):
        run_sweep(s, tmp_path, progress=False, engine="ray", ray_address="127.0.0.1:1")
    toml = tmp_path / "c.toml"
    toml.write_text('[sweep]\nname = "c"\n[base]\ndataset = "digits"\n')
    argv = ["sweep", str(toml), "--results", str(tmp_path), "--ray-address", "auto", "--engine", "ray"]
    assert main(argv) == 2
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_simulation_spreads_its_clients_over_the_cluster(tmp_path, two_node_cluster):
    """``simulate(..., backend=backend_config(address=...))``: Flower's Ray backend joins the cluster, whose
    actor table then shows Flower's client actors on both nodes. The final model equals the in-process
    engine's (itself bit-identical to a local Ray simulation)."""
    from resam_flower.experiments.engine import simulate_in_process
    from resam_flower.simulation import backend_config, simulate

    cfg = {**TINY, "num-clients": 4, "results-dir": str(tmp_path)}
    local = simulate_in_process({**cfg, "run-name": "local"})
    remote = simulate({**cfg, "run-name": "cluster"}, backend=backend_config(address=two_node_cluster))
    assert remote["final_model_sha256"] == local["final_model_sha256"]
    assert remote["rounds"] == TINY["num-server-rounds"] and remote["skipped_rounds"] == 0
    code = (  # the cluster's actor table (GCS), dead actors included: where Flower's client actors ran
        "import ray, ray._private.state as state\n"
        f"ray.init(address={two_node_cluster!r}, log_to_driver=False)\n"
        "actors = state.actors().values()\n"
        "print(len({a['Address']['NodeID'] for a in actors if 'ClientAppActor' in a['ActorClassName']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "2", out.stdout


def test_joining_a_cluster_brings_no_cpu_count_of_its_own():
    from resam_flower.simulation import backend_config

    joined = backend_config(address="auto")
    assert joined["init_args"]["address"] == "auto" and "num_cpus" not in joined["init_args"]
    assert backend_config(num_cpus=3)["init_args"]["num_cpus"] == 3
    with pytest.raises(ValueError, match="num_cpus cannot be given with address"):
        backend_config(num_cpus=2, address="auto")
