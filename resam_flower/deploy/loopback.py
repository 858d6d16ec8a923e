"""A whole hardened deployment on one machine: TLS SuperLink on loopback, Fleet-only proxy, ``flwr run .``.

The same commands as ``docs/DEPLOYMENT.md``, on 127.0.0.1 with ports picked at run time and one
``FLWR_HOME`` per process, so that the deployment runtime can be tried (and tested) without devices::

    python -m resam_flower.deploy.loopback --nodes 4 --byzantine sf --rounds 5

starts a SuperLink bound to 127.0.0.1 (TLS, ``--enable-supernode-auth``, ``--isolation process`` with a
SuperExec authentication secret) and its ``flower-superexec``, the nginx proxy of
:mod:`resam_flower.deploy.proxy` that forwards only the Fleet API (what the devices reach), registers the
SuperNodes' public keys with ``flwr supernode register`` on the operator's loopback connection, starts the
SuperNodes against the proxy (the last ``--byzantine`` ones with ``byzantine='<attack>'`` in their node
config), runs ``flwr run . <connection> --stream`` from the app folder, and stops every process (with what
it spawned) on exit, error or Ctrl-C. ``--no-proxy`` lets the SuperNodes dial the SuperLink directly (the
layout without nginx, where a device can also reach the Control API). It exits with status 0 only if this run
wrote its ``summary.json`` with ``status`` ``"ok"`` (``flwr run`` itself exits 0 when the run failed): a
summary left in a reused ``--workdir`` by an earlier run does not count (:func:`run_summary`).
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import click
from flwr.common.config import parse_config_args

from .credentials import Credentials, generate_credentials
from .processes import ProcessGroup, flower_env, free_port, health_ok, wait_until
from .proxy import fleet_server_block, nginx_command, write_standalone

__all__ = [
    "LoopbackFederation",
    "flower_config_toml",
    "main",
    "run_summary",
    "summary_files",
    "summary_target",
    "superexec_command",
    "superlink_command",
    "supernode_command",
]

HOST = "127.0.0.1"
#: The operator's connection: the SuperLink itself, on loopback (Control API).
CONNECTION = "resam-tls"
#: What a device reaches: the Fleet-only proxy (used by the tests to show that it refuses Control calls).
DEVICE_CONNECTION = "resam-device"


def _bin(name: str) -> str:
    """The Flower script next to this interpreter (a venv's bin/), else the name for PATH lookup."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def superlink_command(creds: Credentials, host: str, port: int, database: str | Path) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication, SuperExec authentication, no ``uv sync``.

    ``--isolation process``: the SuperLink does not start a SuperExec itself (Flower ignores the SuperExec
    secret in the default ``subprocess`` mode); :func:`superexec_command` starts one with the same secret.
    """
    return [
        _bin("flower-superlink"),
        "--ssl-ca-certfile", str(creds.ca_cert),
        "--ssl-certfile", str(creds.server_cert),
        "--ssl-keyfile", str(creds.server_key),
        "--enable-supernode-auth",
        "--isolation", "process",
        "--superexec-auth-secret-file", str(creds.superexec_secret),
        "--disable-runtime-dependency-installation",
        "--host", host,
        "--port", str(port),
        "--database", str(database),
    ]  # fmt: skip


def superexec_command(superlink: str, creds: Credentials) -> list[str]:
    """``flower-superexec`` for the SuperLink at ``superlink`` (its Runtime API), signing with the secret."""
    return [
        _bin("flower-superexec"),
        "--runtime-api-address", superlink,
        "--root-certificates", str(creds.ca_cert),
        "--superexec-auth-secret-file", str(creds.superexec_secret),
    ]  # fmt: skip


def supernode_command(
    superlink: str, ca_cert: str | Path, private_key: str | Path | None, node_config: str, port: int
) -> list[str]:
    """``flower-supernode`` verifying the SuperLink with ``ca_cert``, signing with ``private_key`` if any."""
    auth = ["--auth-supernode-private-key", str(private_key)] if private_key is not None else []
    return [
        _bin("flower-supernode"),
        "--superlink", superlink,
        "--root-certificates", str(ca_cert),
        *auth,
        "--node-config", node_config,
        "--port", str(port),  # this SuperNode's local Runtime API (one per SuperNode on a machine)
    ]  # fmt: skip


def flower_config_toml(address: str, ca_cert: str | Path, name: str = CONNECTION, **others: str) -> str:
    """A Flower 1.42 config (``$FLWR_HOME/config.toml``): default connection ``name``, plus ``others``."""
    ca = Path(ca_cert).resolve()
    text = f'[superlink]\ndefault = "{name}"\n'
    for conn, addr in {name: address, **others}.items():
        text += f'\n[superlink.{conn}]\naddress = "{addr}"\nroot-certificates = "{ca}"\n'
    return text


def summary_target(run_config: Sequence[str], cwd: str | Path) -> tuple[Path, str]:
    """``(results-dir, run-name)`` of the run that ``flwr run --run-config <line> ...`` starts.

    Parameters
    ----------
    run_config : sequence of str
        The ``--run-config`` lines in order, a later one overriding an earlier one's keys (as Flower merges
        them): the loopback's defaults, then the user's.
    cwd : str or Path
        The ServerApp's working directory (the SuperExec's), against which a relative ``results-dir`` is
        resolved.

    Returns
    -------
    tuple of Path and str
        The absolute results folder and the run name (``""``: the app derives one from the run config).

    Raises
    ------
    SystemExit
        A line Flower would refuse (naming it), e.g. a key given twice in one line.
    """
    try:
        config = parse_config_args(list(run_config))
    except (ValueError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        raise SystemExit(f"--run-config {' '.join(run_config)!r}: {message}") from None
    results = Path(str(config.get("results-dir", "results")))
    return Path(cwd, results).resolve(), str(config.get("run-name", ""))


def summary_files(results_dir: Path, run_name: str) -> dict[Path, tuple[int, int]]:
    """The ``summary.json`` files a run named ``run_name`` may write, with their (inode, mtime in ns).

    ``<results_dir>/<run_name>/summary.json``, or with ``run_name=""`` (a name the app derives) every
    ``<results_dir>/*/summary.json``; those that exist. The app replaces a summary by a rename, so a summary
    this run wrote has a new inode and time, whatever the clock says.
    """
    paths = (
        [results_dir / run_name / "summary.json"] if run_name else sorted(results_dir.glob("*/summary.json"))
    )
    found = {}
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        found[path] = (st.st_ino, st.st_mtime_ns)
    return found


def run_summary(
    before: Mapping[Path, tuple[int, int]],
    results_dir: Path,
    run_name: str,
    returncode: int | None = 0,
    logs: Path | None = None,
) -> Path:
    """The ``summary.json`` this run wrote, if it says ``status = "ok"``; else :class:`SystemExit` saying why.

    Parameters
    ----------
    before : mapping of Path to (int, int)
        :func:`summary_files` taken before the run started: a summary still as it was then is an earlier
        run's, not this one's.
    results_dir, run_name : Path, str
        Where the run writes (:func:`summary_target`).
    returncode : int or None
        ``flwr run``'s exit status. It exits 0 when the run failed too, so the summary decides; a nonzero
        status fails even with an ``ok`` summary.
    logs : Path, optional
        The log folder, named in the messages.

    Raises
    ------
    SystemExit
        (message, exit status 1) naming the summary path and its status, or saying that this run wrote none.
    """
    see = f"; see the logs in {logs}" if logs is not None else ""
    after = summary_files(results_dir, run_name)
    written = [path for path, key in after.items() if before.get(path) != key]
    where = results_dir / (run_name or "<run-name>") / "summary.json"
    code = f" (flwr run exited with code {returncode})" if returncode else ""
    if not written:
        stale = " (the one there is an earlier run's)" if after else ""
        raise SystemExit(f"the run failed{code}: it wrote no summary at {where}{stale}{see}")
    path = max(written, key=lambda p: after[p][1])
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"the run failed{code}: its summary {path} cannot be read ({exc}){see}") from None
    status = summary.get("status") if isinstance(summary, dict) else None
    if status != "ok":
        raise SystemExit(f"the run failed{code}: status {status!r} (expected 'ok') in {path}{see}")
    if returncode:
        raise SystemExit(f"the run failed{code} although its summary {path} says status 'ok'{see}")
    return path


def _answers(host: str, port: int, ca_cert: Path) -> bool:
    """Whether an HTTPS server verified by ``ca_cert`` answers at all (any status) on ``host:port``."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(f"https://{host}:{port}/", timeout=2, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


class LoopbackFederation:
    """SuperLink, SuperExec, Fleet proxy and SuperNodes on 127.0.0.1 in ``workdir``; stops them all on exit.

    ``address`` is the SuperLink (the operator's Control API), ``fleet_address`` what the SuperNodes dial:
    the proxy's port with ``proxy=True`` (default), else the SuperLink itself.
    """

    def __init__(self, workdir: str | Path, num_keys: int, timeout: float = 90.0, proxy: bool = True) -> None:
        self.workdir = Path(workdir)
        self.timeout = timeout
        # Throwaway credentials, registered afresh on every run: a reused workdir gets new ones (force).
        self.creds = generate_credentials(self.workdir / "certs", nodes=num_keys, force=True)
        self.port = free_port(HOST)
        self.address = f"{HOST}:{self.port}"
        self.proxy_port = free_port(HOST) if proxy else None
        self.fleet_address = f"{HOST}:{self.proxy_port}" if proxy else self.address
        self.cli_home = self.workdir / "cli"
        self.cli_home.mkdir(parents=True, exist_ok=True)
        devices = {DEVICE_CONNECTION: self.fleet_address}
        config = flower_config_toml(self.address, self.creds.ca_cert, **devices)
        (self.cli_home / "config.toml").write_text(config)
        self.procs = ProcessGroup(self.workdir / "logs")

    def _home(self, name: str) -> Path:
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        return home

    def start_superlink(self) -> subprocess.Popen:
        """Start the SuperLink (wait for its health endpoint), its SuperExec, and the proxy (wait for it)."""
        home = self._home("superlink")
        link = self.procs.start(
            "superlink",
            superlink_command(self.creds, HOST, self.port, home / "state.db"),
            env=flower_env(home),
            cwd=home,
        )
        wait_until(lambda: health_ok(HOST, self.port, self.creds.ca_cert), self.timeout, "SuperLink", [link])
        exec_home = self._home("superexec")
        cmd = superexec_command(self.address, self.creds)
        self.procs.start("superexec", cmd, env=flower_env(exec_home), cwd=exec_home)
        if self.proxy_port is not None:
            block = fleet_server_block(self.fleet_address, self.address, self.creds.ca_cert.parent)
            proxy_dir = self._home("proxy")
            nginx = self.procs.start("proxy", nginx_command(write_standalone(proxy_dir, block), proxy_dir))
            up = lambda: _answers(HOST, self.proxy_port, self.creds.ca_cert)  # noqa: E731
            wait_until(up, self.timeout, "Fleet proxy (nginx)", [nginx])
        return link

    def register(self, public_keys: Sequence[Path], connection: str = CONNECTION) -> None:
        """``flwr supernode register <key>.pub`` for every key (concurrently); raise if one fails."""
        flwr, env = _bin("flwr"), flower_env(self.cli_home)
        cmds = [[flwr, "supernode", "register", str(k), connection, "--format", "json"] for k in public_keys]
        pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        running = [subprocess.Popen(c, env=env, **pipe) for c in cmds]
        for cmd, proc in zip(cmds, running, strict=True):
            try:
                out, _ = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            if proc.returncode != 0 or '"success": true' not in out:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{out}")

    def cli(self, *args: str) -> tuple[int, str]:
        """Run ``flwr <args>`` with the operator's config (both connections); ``(exit code, output)``."""
        cmd = [_bin("flwr"), *args]
        try:
            out = subprocess.run(
                cmd, env=flower_env(self.cli_home), capture_output=True, text=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired as exc:
            return -1, f"{' '.join(cmd)} timed out after {self.timeout:.0f}s: {exc.output or ''}"
        return out.returncode, out.stdout + out.stderr

    def start_supernode(self, name: str, key: Path | None, node_config: str, *extra: str) -> subprocess.Popen:
        """Start one SuperNode with its own ``FLWR_HOME`` and Runtime API port (``key=None``: no key)."""
        home = self._home(name)
        cmd = supernode_command(self.fleet_address, self.creds.ca_cert, key, node_config, free_port(HOST))
        return self.procs.start(name, [*cmd, *extra], env=flower_env(home), cwd=home)

    def flwr_run(self, app_dir: str | Path, run_config: str, *more: str) -> subprocess.Popen:
        """Start ``flwr run . resam-tls --stream --run-config ...`` in ``app_dir`` (log: ``flwr-run``).

        Each of ``run_config`` and the (non-empty) ``more`` is its own ``--run-config``: a later one overrides
        an earlier one's keys (a key given twice in one line is refused by Flower).
        """
        configs = [arg for line in (run_config, *more) if line for arg in ("--run-config", line)]
        cmd = [_bin("flwr"), "run", ".", CONNECTION, "--stream", *configs]
        return self.procs.start("flwr-run", cmd, env=flower_env(self.cli_home), cwd=app_dir)

    def __enter__(self) -> LoopbackFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.procs.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run the default app on a loopback federation with TLS and SuperNode authentication."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4, help="SuperNodes (default 4)")
    parser.add_argument("--byzantine", default="sf", help="attack of the Byzantine nodes: sf, lf, ...")
    parser.add_argument("--num-byzantine", type=int, default=1, help="Byzantine SuperNodes (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="num-server-rounds (default 5)")
    parser.add_argument("--run-config", default="", help="more run config, e.g. \"lr=0.5 aggregator='cwtm'\"")
    parser.add_argument("--app", default=".", help="the Flower app folder (default: .)")
    parser.add_argument("--workdir", default=None, help="certs, logs, results (default: a temp dir)")
    parser.add_argument(
        "--no-proxy", action="store_true", help="SuperNodes dial the SuperLink directly (no nginx; less safe)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.num_byzantine < args.nodes:
        raise SystemExit(f"--num-byzantine must be in [0, {args.nodes - 1}], got {args.num_byzantine}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="resam-loopback-")).resolve()
    defaults = (
        f"num-server-rounds={args.rounds} num-clients={args.nodes} num-byzantine={args.num_byzantine} "
        f"attack='none' dataset='digits' model='mlp' eval-every=1 results-dir='{workdir / 'results'}' "
        "run-name='loopback'"
    )
    # The user's --run-config overrides the defaults (results-dir and run-name too): the summary is looked
    # for where the ServerApp writes it, relative to the SuperExec's working directory.
    results_dir, run_name = summary_target([defaults, args.run_config], workdir / "superexec")
    print(f"loopback federation in {workdir} (logs in {workdir / 'logs'})")
    with LoopbackFederation(workdir, args.nodes, proxy=not args.no_proxy) as fed:
        try:
            fed.start_superlink()
        except FileNotFoundError as exc:  # no nginx
            raise SystemExit(f"{exc}; or run with --no-proxy") from None
        print(f"SuperLink (Control API, operator only) {fed.address}; SuperNodes dial {fed.fleet_address}")
        fed.register(fed.creds.node_public_keys)
        for i, key in enumerate(fed.creds.node_private_keys):
            config = f"partition-id={i} num-partitions={args.nodes}"
            if i >= args.nodes - args.num_byzantine:
                config += f" byzantine='{args.byzantine}'"
            fed.start_supernode(f"supernode-{i}", key, config)
        before = summary_files(results_dir, run_name)  # an earlier run's summaries do not count
        run = fed.flwr_run(Path(args.app).resolve(), defaults, args.run_config)
        log_path = fed.procs.log_dir / "flwr-run.log"
        shown = 0
        while run.poll() is None:  # follow the run's log until `flwr run --stream` ends
            time.sleep(1)
            text = log_path.read_text(errors="replace")
            print(text[shown:], end="", flush=True)
            shown = len(text)
        print(log_path.read_text(errors="replace")[shown:], end="")
    summary = run_summary(before, results_dir, run_name, run.returncode, fed.procs.log_dir)
    print(f"\nsummary: {summary}")


if __name__ == "__main__":
    main()
