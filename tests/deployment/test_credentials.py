"""Dev credentials: a CA, a SuperLink certificate for the given hosts, SuperNode keys Flower 1.42 accepts."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.auth import load_superexec_auth_secret
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from resam_flower.deploy.credentials import (
    generate_credentials,
    generate_node_keys,
    generate_superexec_secret,
    main,
)


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return generate_credentials(tmp_path_factory.mktemp("certs"), nodes=3, hosts=["10.1.2.3", "pi.local"])


def test_server_certificate_is_signed_by_the_ca_for_every_host(creds):
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "pi.local"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")
    }


def test_tls_contexts_load_what_the_superlink_and_clients_load(creds):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(creds.server_cert, creds.server_key)  # fails if key and certificate differ
    client = ssl.create_default_context(cafile=str(creds.ca_cert))
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_supernode_keys_are_openssh_nist_keys_flower_accepts(creds):
    assert len(creds.node_private_keys) == len(creds.node_public_keys) == 3
    seen = set()
    for private_path, public_path in zip(creds.node_private_keys, creds.node_public_keys, strict=True):
        private = serialization.load_ssh_private_key(private_path.read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        registered = try_load_public_key(public_path)  # what `flwr supernode register` sends
        assert registered == public_key_to_bytes(private.public_key())
        seen.add(registered)
        assert public_path.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert len(seen) == 3


def test_private_files_are_owner_only(creds):
    for path in (creds.ca_key, creds.server_key, creds.superexec_secret, *creds.node_private_keys):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(creds.ca_cert.stat().st_mode) == 0o644


def test_superexec_secret_is_what_flower_loads(creds):
    secret = creds.superexec_secret.read_bytes()
    assert load_superexec_auth_secret(str(creds.superexec_secret)) == secret
    assert len(secret) == 64 and int(secret, 16) >= 0  # 32 random bytes as hex, no newline
    other = generate_credentials(creds.ca_cert.parent / "again", nodes=0).superexec_secret.read_bytes()
    assert other != secret


def test_rewrite_enforces_0600_over_an_old_world_readable_file(tmp_path):
    old = tmp_path / "supernode-1"
    old.write_bytes(b"old")
    old.chmod(0o666)
    twin = tmp_path / "twin"
    os.link(old, twin)  # a hard link made before the rewrite must not receive the new key
    ((private, _),) = generate_node_keys(tmp_path, ["supernode-1"], force=True)
    assert private == old and stat.S_IMODE(old.stat().st_mode) == 0o600
    assert old.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert twin.read_bytes() == b"old" and old.stat().st_ino != twin.stat().st_ino
    creds = generate_credentials(tmp_path, nodes=0)
    for path in (creds.ca_key, creds.server_key, creds.superexec_secret):  # rewritten too
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_in_place_of_a_key_is_refused(tmp_path, dangling):
    target = tmp_path / "elsewhere" / "authorized"
    target.parent.mkdir()
    if not dangling:
        target.write_bytes(b"precious")
        target.chmod(0o644)
    out = tmp_path / "certs"
    out.mkdir()
    (out / "supernode-1").symlink_to(target)
    with pytest.raises(ValueError, match="supernode-1: it is a symbolic link"):
        generate_node_keys(out, ["supernode-1"])
    assert (out / "supernode-1").is_symlink()
    if dangling:
        assert not target.exists()
    else:
        assert target.read_bytes() == b"precious" and stat.S_IMODE(target.stat().st_mode) == 0o644
    (out / "ca.key").symlink_to(target)
    with pytest.raises(ValueError, match="ca.key: it is a symbolic link"):
        generate_credentials(out, nodes=0)


def test_more_keys_later_and_bad_arguments(tmp_path):
    (private, public), = generate_node_keys(tmp_path, ["pi-7"])
    assert private.name == "pi-7" and public.name == "pi-7.pub"
    with pytest.raises(ValueError, match="nodes must be >= 0"):
        generate_credentials(tmp_path, nodes=-1)
    with pytest.raises(ValueError, match="days must be >= 1"):
        generate_credentials(tmp_path, days=0)


def test_command_line(tmp_path, capsys):
    main(["--out", str(tmp_path), "--nodes", "2", "--host", "192.168.1.10"])
    assert {p.name for p in tmp_path.iterdir()} == {
        "ca.crt", "ca.key", "server.pem", "server.key",
        "supernode-1", "supernode-1.pub", "supernode-2", "supernode-2.pub", "superexec.secret",
    }
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    assert server.subject.rfc4514_string() == "CN=192.168.1.10"
    main(["--out", str(tmp_path), "--nodes", "1", "--keys-only", "--prefix", "extra"])
    assert (tmp_path / "extra-1.pub").exists() and "extra-1.pub" in capsys.readouterr().out


def _contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_existing_credentials_are_refused_and_left_as_they_were(tmp_path_factory):
    tmp_path, fresh = tmp_path_factory.mktemp("certs"), tmp_path_factory.mktemp("fresh")
    generate_credentials(tmp_path, nodes=2)
    before = _contents(tmp_path)
    with pytest.raises(FileExistsError, match=r"ca\.crt.*ca\.key.*delete .*--out.*--force"):
        generate_credentials(tmp_path, nodes=2)  # a new CA would break every device's ca.crt
    with pytest.raises(FileExistsError, match=r"supernode-1, .*supernode-1\.pub"):
        generate_node_keys(tmp_path, ["supernode-1"])  # a registered key would no longer match
    (tmp_path / "supernode-2").unlink()  # only the public key is left: refused too, nothing written
    with pytest.raises(FileExistsError, match=r"supernode-2\.pub"):
        generate_node_keys(tmp_path, ["supernode-2", "supernode-3"])
    with pytest.raises(FileExistsError, match="superexec.secret"):
        generate_superexec_secret(tmp_path / "superexec.secret")
    del before["supernode-2"]
    assert _contents(tmp_path) == before
    (fresh / "supernode-2.pub").write_bytes(b"registered")  # the last file checked: still nothing written
    with pytest.raises(FileExistsError, match="supernode-2.pub"):
        generate_credentials(fresh, nodes=2)
    assert _contents(fresh) == {"supernode-2.pub": b"registered"}
    creds = generate_credentials(tmp_path, nodes=2, force=True)  # on purpose: everything replaced
    after = _contents(tmp_path)
    assert all(after[name] != data for name, data in before.items())
    assert creds.node_private_keys[1].exists()


def test_command_line_refuses_to_replace_keys_without_force(tmp_path, capsys):
    keys = ["--out", str(tmp_path), "--nodes", "1", "--keys-only"]
    main(keys)
    pub = (tmp_path / "supernode-1.pub").read_bytes()
    with pytest.raises(SystemExit, match=r"refusing to replace existing .*supernode-1"):
        main(keys)
    assert (tmp_path / "supernode-1.pub").read_bytes() == pub
    main([*keys, "--force"])
    assert (tmp_path / "supernode-1.pub").read_bytes() != pub
    main(["--out", str(tmp_path / "full"), "--nodes", "1"])
    ca = (tmp_path / "full" / "ca.crt").read_bytes()
    with pytest.raises(SystemExit, match=r"refusing to replace existing .*ca\.crt"):
        main(["--out", str(tmp_path / "full"), "--nodes", "1"])
    assert (tmp_path / "full" / "ca.crt").read_bytes() == ca


@pytest.mark.parametrize("keys_only", [True, False])
@pytest.mark.parametrize("nodes", [0, -2])
def test_command_line_needs_at_least_one_node(tmp_path, nodes, keys_only):
    out = tmp_path / "certs"
    with pytest.raises(SystemExit, match=rf"--nodes must be >= 1, got {nodes}"):
        main(["--out", str(out), "--nodes", str(nodes), *(["--keys-only"] if keys_only else [])])
    assert not out.exists()


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("192.168.1.10:9443", "has a port"),
        ("superlink.lan:9443", "has a port"),
        ("https://superlink.lan", "has a scheme"),
        ("superlink.lan/flower", "has a path"),
        ("super link.lan", "whitespace"),
        ("superlink.lan ", "whitespace"),
        ("", "empty"),
        ("[::1]", "brackets"),
        ("[2001:db8::1]:9443", "brackets"),
        ("0.0.0.0", "bind address"),
        ("::", "bind address"),
        ("fe80::1%eth0", "zone index"),
        ("super_link.lan", "valid DNS name"),
        ("-superlink.lan", "valid DNS name"),
        ("superlink-.lan", "valid DNS name"),
        ("superlink..lan", "valid DNS name"),
        ("superlink.lan.", "valid DNS name"),
        ("a." + "b" * 64, "valid DNS name"),
        ("192.168.1.300", "valid DNS name"),
        ("*", "valid DNS name"),
        ("a.*.lan", "valid DNS name"),
    ],
)
def test_hosts_that_are_not_a_bare_address_or_dns_name_are_refused(tmp_path, host, why):
    with pytest.raises(ValueError, match=rf"host {re.escape(repr(host))} .*{why}.*e\.g\. "):
        generate_credentials(tmp_path, nodes=1, hosts=["pi.local", host])
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    with pytest.raises(SystemExit, match=re.escape(repr(host))):
        main(["--out", str(tmp_path), f"--host={host}"])


def test_bare_addresses_and_dns_names_are_accepted(tmp_path):
    hosts = ["192.168.1.10", "2001:db8::5", "fe80::1", "superlink.lan", "Pi-4.local", "*.farm.lan", "pi4"]
    creds = generate_credentials(tmp_path, nodes=0, hosts=hosts)
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", *hosts[3:]}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", *hosts[:3]}
