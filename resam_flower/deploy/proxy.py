"""The devices' side of a hardened SuperLink: an nginx reverse proxy that forwards only the Fleet API.

Flower 1.42's SuperLink serves three APIs on one HTTPS port: ``/v1/fleet/*`` (SuperNodes), ``/v1/control/*``
(the ``flwr`` CLI: start runs, register SuperNode keys, ...) and ``/v1/runtime/*`` (the SuperExec and the
ServerApp). The open-source Control API has no authentication, so whoever reaches that port can register
SuperNode keys of their own making (Sybil nodes beyond ``f``) and start runs with their own code. The
hardened layout therefore binds the SuperLink to ``127.0.0.1`` (the operator reaches Control there, on the
server or through an SSH tunnel) and puts this proxy in front of it for the devices:

* it terminates TLS with the SuperLink's certificate and re-encrypts to the SuperLink on loopback
  (``proxy_ssl_verify`` against the CA: SuperNode authentication requires TLS on the SuperLink);
* it forwards ``POST`` to the Fleet routes a SuperNode with a registered key calls
  (:data:`FLEET_ROUTES`), rewritten to the exact route name; other ``/v1/fleet/`` paths (self-registration
  of key-less SuperNodes) get ``401`` (a SuperNode exits on it), everything else ``403``: Control,
  Runtime, ``/health``, ``/docs``, other methods, encoded paths;
* it bounds request bodies (:data:`DEFAULT_MAX_BODY`; Flower sends arrays in chunks of 5 MiB) and streams
  them, and the replies, through memory buffers: it writes nothing but its logs (nginx running as root
  drops its workers to ``nobody``, who could not write temporary files into a private folder).

SuperNode authentication is unchanged: Flower's signature headers (``flwr-public-key``, ``flwr-signature``,
``flwr-timestamp``) pass through, and the SuperLink still refuses unregistered keys. Command line::

    python -m resam_flower.deploy.proxy --certs certs --listen 0.0.0.0:9443 --superlink 127.0.0.1:8000

writes ``<workdir>/nginx.conf`` and runs nginx in the foreground (pid, logs, buffers in that folder);
``--print-server-block`` prints the ``upstream``/``server`` blocks for ``/etc/nginx/conf.d/`` instead
(``deploy/nginx/resam-fleet-proxy.conf`` in the repository is that output for standard paths).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_BODY",
    "FLEET_ROUTES",
    "NGINX_INSTALL_HINT",
    "fleet_server_block",
    "main",
    "nginx_binary",
    "nginx_command",
    "standalone_nginx_conf",
    "write_standalone",
]

#: Fleet routes of Flower 1.42 a SuperNode calls when it signs with a registered key (no self-registration:
#: ``register-node`` / ``unregister-node`` serve only key-less SuperNodes and stay closed).
FLEET_ROUTES = (
    "activate-node",
    "deactivate-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)
#: Largest request body the proxy accepts (nginx size syntax).
DEFAULT_MAX_BODY = "32m"
NGINX_INSTALL_HINT = (
    "nginx is not installed: on Debian/Ubuntu run `apt-get update && apt-get install -y "
    "--no-install-recommends nginx` (as root), or put the directory of an nginx binary on PATH"
)

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[0-9A-Za-z.-]+):(\d{1,5})$")
_SIZE = re.compile(r"^\d{1,6}[km]?$")


def _check_address(name: str, address: str) -> str:
    match = _ADDRESS.match(address)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"{name} must be host:port with a port in [1, 65535], got {address!r}")
    return address


def _quoted(path: str | Path) -> str:
    text = str(Path(path).resolve())
    if any(c in text for c in '"\\;{}$\n\r') or not text.isprintable():
        raise ValueError(f"path {text!r} has characters an nginx configuration cannot hold safely")
    return f'"{text}"'


def fleet_server_block(
    listen: str,
    superlink: str,
    certs: str | Path,
    max_body: str = DEFAULT_MAX_BODY,
    tls_name: str = "localhost",
) -> str:
    """nginx ``upstream`` + ``server`` blocks: TLS on ``listen``, Fleet routes only, to ``superlink``.

    Parameters
    ----------
    listen
        ``host:port`` the devices dial (``0.0.0.0:9443``; ``127.0.0.1:<port>`` on loopback).
    superlink
        ``host:port`` of the SuperLink, bound to loopback (``127.0.0.1:8000``).
    certs
        Folder with ``server.pem``/``server.key`` (served to the devices) and ``ca.crt`` (verifies the
        SuperLink), as :mod:`resam_flower.deploy.credentials` writes them.
    max_body
        Largest request body, nginx syntax (``"32m"``).
    tls_name
        Name checked in the SuperLink's certificate (one of its SANs).
    """
    _check_address("listen", listen)
    _check_address("superlink", superlink)
    if not _SIZE.match(max_body):
        raise ValueError(f"max_body must be digits with an optional k or m suffix, got {max_body!r}")
    if not re.fullmatch(r"[0-9A-Za-z.-]{1,253}", tls_name):
        raise ValueError(f"tls_name must be a DNS name or IPv4 address, got {tls_name!r}")
    certs = Path(certs)
    routes = "|".join(FLEET_ROUTES)
    return f"""\
# resam-flower: devices reach only the Fleet API of a SuperLink bound to loopback.
upstream resam_superlink {{
    server {superlink};
    keepalive 16;
}}

server {{
    listen {listen} ssl;
    ssl_certificate {_quoted(certs / "server.pem")};
    ssl_certificate_key {_quoted(certs / "server.key")};
    ssl_protocols TLSv1.2 TLSv1.3;
    server_tokens off;
    client_max_body_size {max_body};

    # The Fleet routes a SuperNode with a registered key calls; the upstream sees the exact route name.
    location ~ ^/v1/fleet/({routes})$ {{
        limit_except POST {{ deny all; }}
        proxy_pass https://resam_superlink/v1/fleet/$1;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host {tls_name};
        proxy_ssl_trusted_certificate {_quoted(certs / "ca.crt")};
        proxy_ssl_verify on;
        proxy_ssl_name {tls_name};
        proxy_ssl_server_name on;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
        # Stream both ways through memory buffers: the proxy writes no request or response to disk.
        proxy_request_buffering off;
        proxy_max_temp_file_size 0;
    }}

    # Other Fleet paths (self-registration of key-less SuperNodes...): 401, which makes a SuperNode exit
    # (Flower 1.42's SuperNode takes a 403 for "run not running" and hangs on it when registering).
    location /v1/fleet/ {{
        return 401;
    }}

    # Control API (runs, SuperNode registration), Runtime API, health, docs: operator only, on loopback.
    location / {{
        return 403;
    }}
}}
"""


def standalone_nginx_conf(workdir: str | Path, server_block: str) -> str:
    """A whole ``nginx.conf`` that runs unprivileged with its pid, logs and buffers under ``workdir``."""
    work = Path(workdir).resolve()
    tmp = work / "tmp"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {_quoted(tmp / kind)};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    body = "\n".join("    " + line if line else "" for line in server_block.splitlines())
    return f"""\
worker_processes 1;
daemon off;
pid {_quoted(work / "nginx.pid")};
error_log {_quoted(work / "error.log")} warn;
events {{
    worker_connections 512;
}}
http {{
    access_log {_quoted(work / "access.log")};
{temp_paths}
{body}
}}
"""


def nginx_binary() -> str:
    """The ``nginx`` executable (PATH, then the sbin folders); ``FileNotFoundError`` says how to get it."""
    found = shutil.which("nginx") or shutil.which(
        "nginx", path="/usr/sbin:/usr/local/sbin:/usr/local/nginx/sbin"
    )
    if found is None:
        raise FileNotFoundError(NGINX_INSTALL_HINT)
    return found


def nginx_command(conf: str | Path, workdir: str | Path) -> list[str]:
    """``nginx`` in the foreground with ``conf``, prefix and early error log in ``workdir``."""
    work = str(Path(workdir).resolve())
    return [nginx_binary(), "-c", str(Path(conf).resolve()), "-p", work, "-e", f"{work}/error.log"]


def write_standalone(workdir: str | Path, server_block: str) -> Path:
    """Write ``<workdir>/nginx.conf`` (and its buffer folders) for :func:`nginx_command`; return its path."""
    work = Path(workdir)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(standalone_nginx_conf(work, server_block))
    return conf


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the proxy configuration and run nginx in the foreground (or print the blocks)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certs", default="certs", help="folder with server.pem, server.key, ca.crt")
    parser.add_argument(
        "--listen", default="0.0.0.0:9443", help="address the devices dial (default 0.0.0.0:9443)"
    )
    parser.add_argument(
        "--superlink", default="127.0.0.1:8000", help="SuperLink on loopback (127.0.0.1:8000)"
    )
    parser.add_argument(
        "--max-body", default=DEFAULT_MAX_BODY, help=f"largest request (default {DEFAULT_MAX_BODY})"
    )
    parser.add_argument(
        "--workdir", default="fleet-proxy", help="nginx.conf, pid, logs (default fleet-proxy/)"
    )
    parser.add_argument(
        "--print-server-block", action="store_true", help="print the blocks for conf.d and exit"
    )
    args = parser.parse_args(argv)
    block = fleet_server_block(args.listen, args.superlink, args.certs, args.max_body)
    if args.print_server_block:
        print(block, end="")
        return
    try:
        cmd = nginx_command(write_standalone(args.workdir, block), args.workdir)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    print(
        f"Fleet proxy on {args.listen} -> {args.superlink} (logs in {Path(args.workdir).resolve()})",
        flush=True,
    )
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
