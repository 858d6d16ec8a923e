"""The server side of the hardened deployment in one command: SuperLink, SuperExec and the Fleet proxy.

::

    python -m resam_flower.deploy.server --certs certs --listen 0.0.0.0:9443

starts, and keeps in the foreground until Ctrl-C (or until one of them exits):

1. ``flower-superlink`` bound to ``127.0.0.1:<port>`` (default 8000): TLS, SuperNode authentication,
   ``--isolation process`` with the SuperExec authentication secret ``<certs>/superexec.secret``, no runtime
   ``uv sync``. Its Control API is reachable only from this machine (or an SSH tunnel to it);
2. ``flower-superexec`` with the same secret: the only process the SuperLink hands ServerApp tasks to;
3. nginx (:mod:`resam_flower.deploy.proxy`) on ``--listen``: what the devices dial, Fleet API only.

Logs go to ``<workdir>/logs/{superlink,superexec,proxy}.log``; every process, with what it spawned, is
stopped on exit. ``scripts/start_server.sh`` runs this with the repository's interpreter.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from .credentials import Credentials
from .loopback import superexec_command, superlink_command
from .processes import ProcessGroup, flower_env, health_ok, wait_until
from .proxy import DEFAULT_MAX_BODY, fleet_server_block, nginx_command, write_standalone

__all__ = ["load_credentials", "main"]


def load_credentials(certs: str | Path) -> Credentials:
    """The server's credential files in ``certs``; ``FileNotFoundError`` naming the missing ones."""
    folder = Path(certs).resolve()
    names = ("ca.crt", "server.pem", "server.key", "superexec.secret")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}: run `python -m resam_flower.deploy.credentials "
            f"--out {certs} --host <server address>` (or scripts/generate_certs.sh) first"
        )
    return Credentials(
        ca_cert=folder / "ca.crt",
        ca_key=folder / "ca.key",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        node_private_keys=(),
        node_public_keys=(),
        superexec_secret=folder / "superexec.secret",
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run the SuperLink on loopback, its SuperExec and the Fleet proxy until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certs", default="certs", help="credentials folder (default: certs)")
    parser.add_argument(
        "--listen", default="0.0.0.0:9443", help="what the devices dial (default 0.0.0.0:9443)"
    )
    parser.add_argument("--port", type=int, default=8000, help="SuperLink port on 127.0.0.1 (default 8000)")
    parser.add_argument("--database", default="superlink-state.db", help="SuperLink state (SQLite file)")
    parser.add_argument("--max-body", default=DEFAULT_MAX_BODY, help="largest device request (nginx size)")
    parser.add_argument("--workdir", default="superlink-run", help="logs and proxy files (superlink-run/)")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise SystemExit(f"--port must be in [1, 65535], got {args.port}")
    try:
        creds = load_credentials(args.certs)
        block = fleet_server_block(args.listen, f"127.0.0.1:{args.port}", args.certs, args.max_body)
        workdir = Path(args.workdir).resolve()
        proxy_cmd = nginx_command(write_standalone(workdir / "proxy", block), workdir / "proxy")
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    address = f"127.0.0.1:{args.port}"
    home = workdir / "flwr-home"
    env = flower_env(home)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop also stops the children
    with ProcessGroup(workdir / "logs") as procs:
        try:
            db = str(Path(args.database).resolve())
            link = procs.start("superlink", superlink_command(creds, "127.0.0.1", args.port, db), env=env)
            wait_until(lambda: health_ok("127.0.0.1", args.port, creds.ca_cert), 120, "SuperLink", [link])
            started = [link, procs.start("superexec", superexec_command(address, creds), env=env)]
            started.append(procs.start("proxy", proxy_cmd))
            print(
                f"SuperLink (Control API: operator only) on {address}; devices dial {args.listen} "
                f"(Fleet only); logs in {workdir / 'logs'}. Ctrl-C stops everything.",
                flush=True,
            )
            while all(p.poll() is None for p in started):
                time.sleep(1)
            dead = next(p for p in started if p.poll() is not None)
            name = next(n for n, p in procs.procs.items() if p is dead)
            raise SystemExit(f"{name} exited with code {dead.returncode}; see {workdir / 'logs' / name}.log")
        except KeyboardInterrupt:
            print("stopping", flush=True)


if __name__ == "__main__":
    main()
