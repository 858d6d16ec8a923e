"""Flower's local simulation SuperLink for tests that run ``flwr run`` as a user does."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from resam_flower.deploy.processes import ProcessGroup, flower_env, free_port, health_ok, wait_until

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def local_superlink(tmp_path: Path) -> Iterator[tuple[ProcessGroup, Path]]:
    """Start the SuperLink the ``flwr`` CLI reaches as ``:local:`` on a free loopback port, with a private
    ``FLWR_HOME`` (the developer's ``~/.flwr`` is never read or written); yield the process group to start
    ``flwr run`` in (same environment) and that ``FLWR_HOME``; stop everything on exit.

    Flower's CLI starts this exact SuperLink itself when none answers, but gives it only 15 s, too little on a
    loaded CI machine: the test starts it (same command) so that it also owns its lifetime.
    """
    home, port = tmp_path / "flwr-home", free_port()
    env = flower_env(
        home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port), FLWR_LOCAL_CONTROL_API_PORT=str(free_port())
    )
    procs = ProcessGroup(tmp_path / "logs", env=env)
    runtime = home / "local-superlink"
    runtime.mkdir(parents=True)
    try:
        link = procs.start(
            "local-superlink",
            [
                str(BIN / "flower-superlink"),
                *("--insecure", "--simulation", "--isolation", "subprocess", "--host", "127.0.0.1"),
                *("--port", str(port), "--database", str(runtime / "state.db")),
                "--disable-runtime-dependency-installation",
            ],
            cwd=tmp_path,
        )
        wait_until(lambda: health_ok("127.0.0.1", port), 90, "local SuperLink", [link])
        yield procs, home
    finally:
        procs.stop()
