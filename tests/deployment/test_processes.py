"""ProcessGroup stops what it started and everything that spawned, orphans in new sessions included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resam_flower.deploy.processes import ProcessGroup, flower_env, free_port, health_ok, wait_until

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

# A parent that starts a child in a NEW session (as the SuperLink starts its SuperExec); the child starts a
# grandchild, lives a second and exits; the parent reaps it, so the grandchild is an orphan of init whose
# session leader is gone from /proc. Each writes "<role> <pid>".
TREE = """
import os, subprocess, sys, time
script, out, role = sys.argv[1], sys.argv[2], sys.argv[3]
if role == "parent":
    mid = subprocess.Popen([sys.executable, script, script, out, "mid"], start_new_session=True)
elif role == "mid":
    subprocess.Popen([sys.executable, script, script, out, "leaf"])
with open(out, "a") as fh:
    fh.write(f"{role} {os.getpid()}\\n")
if role == "parent":
    mid.wait()
time.sleep(1.0 if role == "mid" else 60)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@linux_only
def test_stop_ends_descendants_and_orphans_in_new_sessions(tmp_path):
    pids_file = tmp_path / "pids"
    outsider = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        group = ProcessGroup(tmp_path / "logs")
        script = tmp_path / "tree.py"
        script.write_text(TREE)
        group.start("tree", [sys.executable, str(script), str(script), str(pids_file), "parent"])
        wait_until(lambda: pids_file.exists() and pids_file.read_text().count("\n") == 3, 30, "process tree")
        mid = {line.split()[0]: int(line.split()[1]) for line in pids_file.read_text().splitlines()}["mid"]
        wait_until(lambda: not Path(f"/proc/{mid}").exists(), 30, "the mid process to exit and be reaped")
        pids = {line.split()[0]: int(line.split()[1]) for line in pids_file.read_text().splitlines()}
        assert _alive(pids["parent"]) and _alive(pids["leaf"])
        group.stop(timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (_alive(pids["parent"]) or _alive(pids["leaf"])):
            time.sleep(0.1)
        assert not _alive(pids["parent"]) and not _alive(pids["leaf"])
        assert outsider.poll() is None, "a process the group did not start was signalled"
    finally:
        outsider.kill()
        outsider.wait()


def test_context_manager_stops_on_error_and_logs(tmp_path):
    sleeper = [sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(60)"]
    with pytest.raises(RuntimeError, match="boom"):
        with ProcessGroup(tmp_path) as group:
            proc = group.start("sleeper", sleeper)
            wait_until(lambda: "hello" in group.log("sleeper"), 30, "output")
            with pytest.raises(ValueError, match="already started"):
                group.start("sleeper", sleeper)
            raise RuntimeError("boom")
    assert proc.poll() is not None


def test_wait_until_fails_fast_when_a_process_dies(tmp_path):
    with ProcessGroup(tmp_path) as group:
        dead = group.start("dead", [sys.executable, "-c", "raise SystemExit(3)"])
        with pytest.raises(RuntimeError, match="exited with code 3"):
            wait_until(lambda: False, 30, "never", [dead])
    with pytest.raises(TimeoutError, match="not ready after"):
        wait_until(lambda: False, 0.3, "never")


def test_ports_health_and_environment(tmp_path):
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # still free
    assert not health_ok("127.0.0.1", port)  # nothing listens: False, not an exception
    env = flower_env(tmp_path / "home", base={"PATH": "/usr/bin"}, EXTRA="1")
    assert env["FLWR_HOME"] == str(tmp_path / "home") and env["EXTRA"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
