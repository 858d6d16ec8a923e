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
SuperLink's SuperExec authentication secret). Private files are written with mode 0600 whatever file was
there before, and a symbolic link in the way is refused. The CA and keys are for
development and tests (a one-year self-signed CA, unencrypted keys, mode 0600): use your PKI in production.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
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


def generate_node_keys(out: Path, names: Sequence[str]) -> list[tuple[Path, Path]]:
    """One P-384 key pair per name: ``<out>/<name>`` (OpenSSH private key) and ``<out>/<name>.pub``."""
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


def generate_superexec_secret(path: str | Path) -> Path:
    """A random SuperExec authentication secret (64 hex digits, mode 0600) at ``path``.

    ``flower-superlink --isolation process --superexec-auth-secret-file <path>`` then serves its Runtime
    API's task hand-out (``acquire-task``) only to a ``flower-superexec`` started with the same file: a
    process that merely reaches the SuperLink's port cannot take over a run's ServerApp. Flower reads the
    file as raw bytes, so there is no trailing newline.
    """
    return _write(Path(path), secrets.token_hex(32).encode("ascii"), secret=True)


def generate_credentials(
    out: str | Path,
    nodes: int = 0,
    hosts: Sequence[str] = (),
    days: int = 365,
    node_prefix: str = "supernode",
) -> Credentials:
    """Write a CA, a SuperLink certificate for ``hosts`` (plus loopback names) and ``nodes`` key pairs."""
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    out = Path(out)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _cert("resam-flower dev CA", ca_key.public_key(), None, ca_key, days, ca=True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    all_hosts = [*DEFAULT_HOSTS, *hosts]
    common_name = hosts[0] if hosts else "localhost"
    server_cert = _cert(common_name, server_key.public_key(), ca_cert.subject, ca_key, days, False, all_hosts)
    pem = serialization.Encoding.PEM
    pairs = generate_node_keys(out, [f"{node_prefix}-{i}" for i in range(1, nodes + 1)])
    return Credentials(
        ca_cert=_write(out / "ca.crt", ca_cert.public_bytes(pem)),
        ca_key=_write(out / "ca.key", _pem_key(ca_key), secret=True),
        server_cert=_write(out / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(out / "server.key", _pem_key(server_key), secret=True),
        node_private_keys=tuple(p for p, _ in pairs),
        node_public_keys=tuple(q for _, q in pairs),
        superexec_secret=generate_superexec_secret(out / "superexec.secret"),
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
    args = parser.parse_args(argv)
    if args.keys_only:
        pairs = generate_node_keys(Path(args.out), [f"{args.prefix}-{i}" for i in range(1, args.nodes + 1)])
        print("\n".join(str(q) for _, q in pairs))
        return
    creds = generate_credentials(args.out, args.nodes, args.host, args.days, args.prefix)
    print(f"CA certificate:        {creds.ca_cert}")
    print(f"SuperLink cert / key:  {creds.server_cert} / {creds.server_key}")
    print(f"SuperExec secret:      {creds.superexec_secret}")
    for private, public in zip(creds.node_private_keys, creds.node_public_keys, strict=True):
        print(f"SuperNode key pair:    {private} / {public}")


if __name__ == "__main__":
    main()
