"""Dev credentials: a CA, a SuperLink certificate for the given hosts, SuperNode keys Flower 1.42 accepts."""

from __future__ import annotations

import ipaddress
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from resam_flower.deploy.credentials import generate_credentials, generate_node_keys, main


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
    for path in (creds.ca_key, creds.server_key, *creds.node_private_keys):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(creds.ca_cert.stat().st_mode) == 0o644


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
        "supernode-1", "supernode-1.pub", "supernode-2", "supernode-2.pub",
    }
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    assert server.subject.rfc4514_string() == "CN=192.168.1.10"
    main(["--out", str(tmp_path), "--nodes", "1", "--keys-only", "--prefix", "extra"])
    assert (tmp_path / "extra-1.pub").exists() and "extra-1.pub" in capsys.readouterr().out
