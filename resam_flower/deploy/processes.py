"""Start Flower processes (SuperLink, SuperNodes, the ``flwr`` CLI) and stop them with all they spawned.

A SuperLink starts a ``flower-superexec`` in a new session, which starts ``flwr-serverapp`` /
``flwr-simulation`` processes, which may start Ray; a SuperNode does the same for ``flwr-clientapp``. Killing
the process we started leaves those behind. :class:`ProcessGroup` starts every command in its own session,
and :meth:`ProcessGroup.stop` ends the whole family: the processes it started, their descendants, and every
process in one of their sessions (orphans re-parented to init keep their session). On Linux the family is
read from ``/proc``; elsewhere the started sessions are signalled. Only processes this group started, or
that descend from them, are ever signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["ProcessGroup", "flower_env", "free_port", "health_ok", "wait_until"]


def flower_env(flwr_home: str | Path, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for one Flower process: its own ``FLWR_HOME``, this interpreter's scripts first on PATH.

    Also set: ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (Flower 1.42's SuperLink otherwise runs
    ``uv sync`` on the app's dependencies, GBs of CUDA wheels, for every run), ``FLWR_DISABLE_UPDATE_CHECK=1``
    and ``FLWR_TELEMETRY_ENABLED=0`` (no calls out of an offline or air-gapped machine).
    """
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def health_ok(host: str, port: int, ca_cert: str | Path | None = None) -> bool:
    """Whether ``GET /health`` of a SuperLink answers 200 (HTTPS verified by ``ca_cert``, else plain HTTP)."""
    scheme = "https" if ca_cert else "http"
    context = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else None
    try:
        with urllib.request.urlopen(f"{scheme}://{host}:{port}/health", timeout=2, context=context) as res:
            return res.status == 200
    except (OSError, urllib.error.URLError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, alive: Sequence[subprocess.Popen] = ()
) -> None:
    """Poll ``predicate``: ``TimeoutError`` after ``timeout`` s, ``RuntimeError`` if an ``alive`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        for proc in alive:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process {proc.args[0]!r} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.25)


def _proc_table() -> dict[int, tuple[int, int, int, bool]]:
    """pid -> (ppid, session id, start time, zombie) of every process (Linux ``/proc``); ``{}`` elsewhere."""
    table: dict[int, tuple[int, int, int, bool]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # the fields after "pid (comm) ", from field 3 on
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[19]), fields[0] == "Z")
    return table


class ProcessGroup:
    """Processes started in their own sessions, logged to files, stopped with everything they spawned.

    Use as a context manager (or call :meth:`stop` in a ``finally``)::

        with ProcessGroup(tmp_path / "logs") as procs:
            link = procs.start("superlink", ["flower-superlink", ...])
    """

    def __init__(self, log_dir: str | Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.procs: dict[str, subprocess.Popen] = {}
        # Identities are (pid, start time): a pid reused by an unrelated process is never signalled.
        self._family: dict[int, int] = {}
        self._sessions: dict[int, int | None] = {}
        # A background scan keeps the family up to date, so an intermediate session leader that exits (and
        # is reaped) before stop() still has its orphans recorded.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen:
        """Start ``args`` in a new session, stdout and stderr to ``<log_dir>/<name>.log``."""
        if name in self.procs:
            raise ValueError(f"a process named {name!r} was already started")
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        self.procs[name] = proc
        started = _proc_table().get(proc.pid, (0, 0, -1, False))[2]
        with self._lock:
            self._family[proc.pid] = started
            self._sessions[proc.pid] = started
        if self._watcher is None and Path("/proc/self/stat").exists():
            self._stopping.clear()
            self._watcher = threading.Thread(target=self._watch, name="process-group-watch", daemon=True)
            self._watcher.start()
        return proc

    def _watch(self, interval: float = 0.2) -> None:
        while not self._stopping.wait(interval):
            self.track()

    def log(self, name: str) -> str:
        """What the process ``name`` has written so far."""
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def track(self) -> set[int]:
        """Record the current family (descendants and session members); return its running pids."""
        with self._lock:
            return self._track(_proc_table())

    def _track(self, table: dict[int, tuple[int, int, int, bool]]) -> set[int]:
        def member(pid: int) -> bool:
            return pid in table and self._family.get(pid) == table[pid][2]

        def our_session(sid: int) -> bool:
            if sid not in self._sessions:
                return False
            leader = table.get(sid)  # a live leader must be the one we recorded (not a reused pid)
            return leader is None or self._sessions[sid] in (None, leader[2])

        changed = True
        while changed:
            changed = False
            for pid, (ppid, sid, started, _) in table.items():
                if member(pid):
                    if sid > 1 and sid not in self._sessions:
                        self._sessions[sid] = table[sid][2] if sid in table else None
                        changed = True
                elif pid not in self._family and (member(ppid) or our_session(sid)):
                    self._family[pid] = started
                    changed = True
        return {pid for pid in self._family if member(pid) and not table[pid][3]}

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the family, wait up to ``timeout`` s, SIGKILL what is left; reap the started processes."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        live = self.track()
        for pid in live | {p.pid for p in self.procs.values() if p.poll() is None}:
            self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs.values():
                proc.poll()
            if not self.track():
                break
            time.sleep(0.2)
        for pid in self.track():
            self._signal(pid, signal.SIGKILL)
        if not _proc_table():  # no /proc: signal the process groups of the leaders we started
            for proc in self.procs.values():
                self._signal(-proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            if pid < 0:
                os.killpg(-pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
