"""TLS certificates and SuperNode key pairs for a secure Flower deployment (dev/test credentials).

Flower 1.42's SuperLink serves its Fleet, Control and Runtime APIs on one HTTPS port and needs three PEM
files (``--ssl-ca-certfile``, ``--ssl-certfile``, ``--ssl-keyfile``); SuperNodes and the ``flwr`` CLI verify
it with the CA certificate (``--root-certificates`` / ``root-certificates``). SuperNode authentication
(``flower-superlink --enable-supernode-auth``) accepts only nodes whose public key was registered with
``flwr supernode register <key>.pub <connection>``; a node signs its requests with the private key given by
``flower-supernode --auth-supernode-private-key``. Flower expects OpenSSH-format keys on a NIST elliptic curve
(what ``ssh-keygen -t ecdsa -b 384`` writes); the pre-1.40 ``--auth-list-public-keys`` CSV file no longer
exists. This module writes all of it with :mod:`cryptography` (a Flower dependency), no openssl needed::

    python -m resam_flower.deploy.credentials --out certs --nodes 5 --host 192.168.1.10

writes ``ca.crt``/``ca.key``, ``server.pem``/``server.key`` (SANs: localhost, 127.0.0.1, ::1 and every
``--host``), ``supernode-<i>`` / ``supernode-<i>.pub`` for ``i = 1..nodes`` and ``superexec.secret`` (the
SuperLink's SuperExec authentication secret). An existing file is never replaced without ``--force``
(``force=True``): a key already registered with the SuperLink, or a ``ca.crt`` already on the devices, would
stop matching. Private files are written with mode 0600 (also over a file replaced with ``--force``), and a
symbolic link in the way is refused. A ``--host`` is a bare IP address or DNS name (no scheme, port or path;
not the bind address ``0.0.0.0`` / ``::``). The CA and keys are for development and tests (a one-year
self-signed CA, unencrypted keys, mode 0600): use your PKI in production.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._files import atomic_open

__all__ = ["Credentials", "generate_credentials", "generate_node_keys", "generate_superexec_secret", "main"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
#: One DNS label (RFC 1123): letters, digits and inner hyphens, 1 to 63 characters.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)


@dataclass(frozen=True)
class Credentials:
    """Paths of the files :func:`generate_credentials` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_private_keys: tuple[Path, ...]
    node_public_keys: tuple[Path, ...]
    superexec_secret: Path


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """Raise before anything is written: a symbolic link at one of ``paths`` or, unless ``force``, a file.

    Replacing a credential silently breaks what was set up with the old one: a SuperNode key registered with
    ``flwr supernode register`` no longer matches the device's file, a new ``ca.crt`` no longer verifies
    (nor is trusted by) the devices that hold the old one. So an existing file is refused
    (:class:`FileExistsError` naming every one), and ``force`` replaces it on purpose.
    """
    paths = list(paths)
    for path in paths:
        if path.is_symlink():
            raise ValueError(f"refusing to write {path}: it is a symbolic link (to {os.readlink(path)})")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        raise FileExistsError(
            f"refusing to replace existing {', '.join(existing)}: a key already registered with the "
            "SuperLink, or a ca.crt already on the devices, would no longer match; delete the file(s), "
            "choose another --out, or replace them with --force (force=True)"
        )


def _check_host(host: str) -> str:
    """``host`` if it is a bare IP address or DNS name a client can dial, else :class:`ValueError` saying why.

    Refused: a scheme (``https://...``), a port (``name:9443``), a path, whitespace, brackets around an IPv6
    address, a zone index (``fe80::1%eth0``), the unspecified addresses ``0.0.0.0`` and ``::`` (a bind
    address, not a name clients dial) and names that are not RFC 1123 host names (labels of letters, digits
    and inner hyphens, at most 63 characters each and 253 in all; a leading ``*.`` wildcard is allowed; the
    last label not all digits, which would be a malformed IPv4 address).
    """
    bare = "give a bare IP address or DNS name, e.g. 192.168.1.10 or superlink.lan"
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"host {host!r} is empty or contains whitespace: {bare}")
    if "://" in host:
        raise ValueError(f"host {host!r} has a scheme: {bare}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified:
            raise ValueError(
                f"host {host!r} is the unspecified address: that is a bind address (listen on every "
                f"interface), not a name clients dial; {bare}"
            )
        if getattr(ip, "scope_id", None):
            raise ValueError(
                f"host {host!r} has a zone index (%{ip.scope_id}), which a certificate cannot name: give the "
                f"address alone, e.g. {host.split('%')[0]}"
            )
        return host
    if host.startswith("["):
        raise ValueError(
            f"host {host!r} has brackets (or a port): give the IPv6 address alone, e.g. 2001:db8::1"
        )
    if "/" in host:
        raise ValueError(f"host {host!r} has a path: {bare}")
    if ":" in host:
        raise ValueError(f"host {host!r} has a port (or is not a valid IPv6 address): {bare}")
    labels = host.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]  # *.example.lan: a wildcard certificate
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(
            f"host {host!r} is neither an IP address nor a valid DNS name (RFC 1123: labels of letters, "
            f"digits and inner hyphens, 1-63 characters, 253 in all, no trailing dot): {bare}"
        )
    return host


def _write(path: Path, data: bytes, secret: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically with mode 0600 (``secret``) or 0644, whatever was there before.

    A symbolic link at ``path`` is refused (:class:`ValueError`): writing through it would put a private
    key wherever the link points. The bytes go to a new temporary file in the same folder, created with
    the final mode (``fchmod``: the umask cannot widen or narrow it), fsynced, then renamed over ``path``,
    so a file that was there keeps neither its old permissions nor its other hard links.
    """
    if path.is_symlink():
        raise ValueError(f"refusing to write {path}: it is a symbolic link (to {os.readlink(path)})")
    with atomic_open(path, mode=0o600 if secret else 0o644, fsync=True) as fh:
        fh.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # ordered, no duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _cert(subject: str, public_key, issuer: x509.Name | None, signer, days: int, ca: bool, hosts=()):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(_san(hosts), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(signer, hashes.SHA384())


def generate_node_keys(out: Path, names: Sequence[str], force: bool = False) -> list[tuple[Path, Path]]:
    """One P-384 key pair per name: ``<out>/<name>`` (OpenSSH private key) and ``<out>/<name>.pub``.

    If one of these files exists, nothing is written (:class:`FileExistsError` naming them) unless ``force``.
    """
    _refuse_existing([out / n for name in names for n in (name, f"{name}.pub")], force)
    pairs = []
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        pub = _write(out / f"{name}.pub", public + f" {name}\n".encode())
        pairs.append((_write(out / name, private, secret=True), pub))
    return pairs


def generate_superexec_secret(path: str | Path, force: bool = False) -> Path:
    """A random SuperExec authentication secret (64 hex digits, mode 0600) at ``path``.

    ``flower-superlink --isolation process --superexec-auth-secret-file <path>`` then serves its Runtime
    API's task hand-out (``acquire-task``) only to a ``flower-superexec`` started with the same file: a
    process that merely reaches the SuperLink's port cannot take over a run's ServerApp. Flower reads the
    file as raw bytes, so there is no trailing newline. An existing file is refused unless ``force``.
    """
    _refuse_existing([Path(path)], force)
    return _write(Path(path), secrets.token_hex(32).encode("ascii"), secret=True)


def generate_credentials(
    out: str | Path,
    nodes: int = 0,
    hosts: Sequence[str] = (),
    days: int = 365,
    node_prefix: str = "supernode",
    force: bool = False,
) -> Credentials:
    """Write a CA, a SuperLink certificate for ``hosts`` (plus loopback names) and ``nodes`` key pairs.

    ``hosts`` are bare IP addresses or DNS names (see :func:`_check_host`). Nothing is written if one of the
    files exists (:class:`FileExistsError` naming them) unless ``force``, nor if an argument is refused.
    """
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    hosts = [_check_host(host) for host in hosts]
    out = Path(out)
    names = [f"{node_prefix}-{i}" for i in range(1, nodes + 1)]
    files = ("ca.crt", "ca.key", "server.pem", "server.key", "superexec.secret")
    _refuse_existing(
        [*(out / f for f in files), *(out / n for name in names for n in (name, f"{name}.pub"))], force
    )
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _cert("resam-flower dev CA", ca_key.public_key(), None, ca_key, days, ca=True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    all_hosts = [*DEFAULT_HOSTS, *hosts]
    common_name = hosts[0] if hosts else "localhost"
    server_cert = _cert(common_name, server_key.public_key(), ca_cert.subject, ca_key, days, False, all_hosts)
    pem = serialization.Encoding.PEM
    pairs = generate_node_keys(out, names, force)
    return Credentials(
        ca_cert=_write(out / "ca.crt", ca_cert.public_bytes(pem)),
        ca_key=_write(out / "ca.key", _pem_key(ca_key), secret=True),
        server_cert=_write(out / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(out / "server.key", _pem_key(server_key), secret=True),
        node_private_keys=tuple(p for p, _ in pairs),
        node_public_keys=tuple(q for _, q in pairs),
        superexec_secret=generate_superexec_secret(out / "superexec.secret", force),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m resam_flower.deploy.credentials --out certs --nodes 4 --host <ip>``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="certs", help="output folder (default: certs)")
    parser.add_argument("--nodes", type=int, default=4, help="SuperNode key pairs to create (default: 4)")
    parser.add_argument(
        "--host", action="append", default=[], help="SuperLink host/IP for its certificate (repeatable)"
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    parser.add_argument("--keys-only", action="store_true", help="only add SuperNode key pairs to --out")
    parser.add_argument("--prefix", default="supernode", help="key file prefix (default: supernode)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace existing files (a replaced key must be registered again, a replaced CA copied to every "
        "device); without it an existing file is refused and nothing is written",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        raise SystemExit(f"--nodes must be >= 1, got {args.nodes}")
    try:
        if args.keys_only:
            names = [f"{args.prefix}-{i}" for i in range(1, args.nodes + 1)]
            pairs = generate_node_keys(Path(args.out), names, args.force)
            print("\n".join(str(q) for _, q in pairs))
            return
        creds = generate_credentials(args.out, args.nodes, args.host, args.days, args.prefix, args.force)
    except (ValueError, FileExistsError) as exc:
        raise SystemExit(str(exc)) from None
    print(f"CA certificate:        {creds.ca_cert}")
    print(f"SuperLink cert / key:  {creds.server_cert} / {creds.server_key}")
    print(f"SuperExec secret:      {creds.superexec_secret}")
    for private, public in zip(creds.node_private_keys, creds.node_public_keys, strict=True):
        print(f"SuperNode key pair:    {private} / {public}")


if __name__ == "__main__":
    main()
