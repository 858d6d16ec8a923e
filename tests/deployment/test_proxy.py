"""The Fleet-only proxy: its configuration (fast) and, on loopback, what a device can and cannot reach (slow).

The slow test starts the hardened server side of ``docs/DEPLOYMENT.md`` on 127.0.0.1 (TLS SuperLink with
SuperNode and SuperExec authentication, its SuperExec, nginx in front) and plays a device that holds only
``ca.crt`` and a key pair of its own making: it must not register the key, start a run, reach the Runtime
API or anything but the Fleet routes, while the operator's loopback connection still works.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from flwr.superlink.routers.fleet.router import router as flower_fleet_router

from resam_flower.deploy import proxy
from resam_flower.deploy.credentials import generate_credentials, generate_node_keys
from resam_flower.deploy.loopback import CONNECTION, DEVICE_CONNECTION, LoopbackFederation
from resam_flower.deploy.proxy import FLEET_ROUTES, NGINX_INSTALL_HINT, fleet_server_block

REPO = Path(__file__).resolve().parents[2]


def _location_regex(block: str) -> re.Pattern[str]:
    (pattern,) = re.findall(r"location ~ (\S+) \{", block)
    return re.compile(pattern)


def test_forwarded_routes_are_flowers_fleet_routes_except_self_registration():
    flower = {route.path for route in flower_fleet_router.routes}  # what Flower 1.42 serves under /v1/fleet
    ours = {f"/v1/fleet/{name}" for name in FLEET_ROUTES}
    assert flower - ours == {"/v1/fleet/register-node", "/v1/fleet/unregister-node"}
    assert ours <= flower


def test_location_matches_only_the_fleet_routes():
    allowed = _location_regex(fleet_server_block("127.0.0.1:9443", "127.0.0.1:8000", "/certs"))
    for path in sorted(flower_fleet_router.routes, key=lambda r: r.path):
        expected = path.path.rsplit("/", 1)[1] in FLEET_ROUTES
        assert bool(allowed.match(path.path)) == expected, path.path
    # (a match passes only the captured route name upstream: /v1/fleet/$1, never the client's path)
    for path in ("/v1/control/register-node", "/v1/control/start-run", "/v1/runtime/acquire-task",
                 "/health", "/docs", "/v1/fleet/get-run/", "/v1/fleet/get-run/x", "/v1/fleet/get-runx",
                 "/x/v1/fleet/get-run", "/v1/fleet/"):  # fmt: skip
        assert not allowed.match(path), path


def test_shipped_config_is_the_generated_one():
    shipped = (REPO / "deploy" / "nginx" / "resam-fleet-proxy.conf").read_text()
    assert shipped == fleet_server_block("0.0.0.0:9443", "127.0.0.1:8000", "/etc/resam-flower/certs")


def test_bad_configuration_names_the_value():
    with pytest.raises(ValueError, match=r"listen must be host:port.*'0.0.0.0'"):
        fleet_server_block("0.0.0.0", "127.0.0.1:8000", "/certs")
    with pytest.raises(ValueError, match=r"superlink must be .*\[1, 65535\], got '127.0.0.1:70000'"):
        fleet_server_block("0.0.0.0:9443", "127.0.0.1:70000", "/certs")
    with pytest.raises(ValueError, match=r"max_body .* got '1g'"):
        fleet_server_block("0.0.0.0:9443", "127.0.0.1:8000", "/certs", max_body="1g")
    with pytest.raises(ValueError, match="characters an nginx configuration cannot hold"):
        fleet_server_block("0.0.0.0:9443", "127.0.0.1:8000", "/certs; include /etc/passwd")


def test_missing_nginx_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(proxy.shutil, "which", lambda *a, **k: None)
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y --no-install-recommends nginx"):
        proxy.nginx_binary()


def _require_nginx() -> str:
    try:
        return proxy.nginx_binary()
    except FileNotFoundError:
        pytest.fail(f"the deployment tests need nginx: {NGINX_INSTALL_HINT}", pytrace=False)


@pytest.mark.slow
def test_standalone_configuration_is_valid_nginx(tmp_path):
    nginx = _require_nginx()
    generate_credentials(tmp_path / "certs")
    work = tmp_path / "proxy"
    conf = proxy.write_standalone(
        work, fleet_server_block("127.0.0.1:9443", "127.0.0.1:8000", tmp_path / "certs")
    )
    cmd = [nginx, "-t", "-c", str(conf), "-p", str(work), "-e", str(work / "error.log")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "test is successful" in out.stderr, out.stderr


def _post(port: int, path: str, ca: Path, method: str = "POST") -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)  # the path goes out byte for byte
        conn.putheader("content-type", "application/protobuf")
        conn.putheader("content-length", "0")
        conn.endheaders()
        res = conn.getresponse()
        return res.status, res.read().decode(errors="replace")
    finally:
        conn.close()


#: Requests a device could try on the proxy; all must stop there (from nginx, never seen upstream): 401 for
#: Fleet paths that are not forwarded (a SuperNode exits on it), 403 for everything else.
REFUSED = [
    ("POST", "/v1/control/register-node", 403),
    ("POST", "/v1/control/start-run", 403),
    ("POST", "/v1/control/list-nodes", 403),
    ("POST", "/v1/runtime/acquire-task", 403),
    ("POST", "/v1/fleet/register-node", 401),
    ("POST", "/v1/fleet/unregister-node", 401),
    ("GET", "/health", 403),
    ("GET", "/docs", 403),
    ("GET", "/v1/fleet/get-run", 403),
    ("POST", "/v1/fleet/get-run/../../control/list-nodes", 403),
    ("POST", "/v1/fleet/%2e%2e/control/list-nodes", 403),
    ("POST", "/v1/fleet/get-run%2F..%2F..%2Fcontrol%2Flist-nodes", 403),  # nginx decodes, then normalises
    ("POST", "//v1/control/list-nodes", 403),
]


@pytest.mark.slow
def test_device_endpoint_refuses_the_control_and_runtime_apis(tmp_path):
    _require_nginx()
    with LoopbackFederation(tmp_path, num_keys=1, timeout=60) as fed:
        fed.start_superlink()
        ca, device_port = fed.creds.ca_cert, fed.proxy_port
        for method, path, expected in REFUSED:
            status, body = _post(device_port, path, ca, method)
            assert status == expected and "nginx" in body, (method, path, status, body)
        # A Fleet route goes through, and the SuperLink answers it (no signature: 401 from Flower, not nginx).
        status, body = _post(device_port, "/v1/fleet/get-run", ca)
        assert status == 401 and "Invalid SuperNode authentication" in body, (status, body)
        # The device's own key pair, and Flower's CLI pointed at the device endpoint: both refused.
        ((_, sybil_pub),) = generate_node_keys(tmp_path / "device", ["sybil"])
        for args in (("supernode", "register", str(sybil_pub)), ("run", str(REPO))):
            rc, out = fed.cli(*args, DEVICE_CONNECTION, "--format", "json")
            reply = json.loads(out[out.index("{") :])
            assert reply["success"] is False and "403 Forbidden" in reply["error-message"], (args, rc, out)
        upstream = fed.procs.log("superlink")
        assert "/v1/control" not in upstream and "/v1/runtime" not in upstream, upstream[-3000:]
        assert upstream.count('"POST /v1/fleet/get-run HTTP/1.1" 401') == 1, upstream[-3000:]
        # The SuperExec secret: the Runtime API hands out ServerApp tasks only to the SuperExec.
        status, body = _post(fed.port, "/v1/runtime/acquire-task", ca)
        assert status == 401 and "Authentication failed" in body, (status, body)
        # The operator, on loopback: nothing was registered or started; registration works there.
        rc, out = fed.cli("supernode", "ls", CONNECTION, "--format", "json")
        assert rc == 0 and json.loads(out)["nodes"] == [], out
        rc, out = fed.cli("ls", CONNECTION, "--format", "json")
        assert rc == 0 and json.loads(out)["runs"] == [], out
        fed.register([sybil_pub])
        rc, out = fed.cli("supernode", "ls", CONNECTION, "--format", "json")
        assert rc == 0 and len(json.loads(out)["nodes"]) == 1, out


@pytest.mark.slow
def test_start_server_runs_the_hardened_server_side_and_stops_it(tmp_path):
    """``python -m resam_flower.deploy.server`` (what ``scripts/start_server.sh`` runs), then SIGTERM."""
    import signal
    import sys

    from resam_flower.deploy.processes import ProcessGroup, flower_env, free_port, health_ok, wait_until

    _require_nginx()
    creds = generate_credentials(tmp_path / "certs")
    port, device_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "resam_flower.deploy.server", "--certs", str(creds.ca_cert.parent),
           "--listen", f"127.0.0.1:{device_port}", "--port", str(port), "--workdir", str(tmp_path / "run"),
           "--database", str(tmp_path / "state.db")]  # fmt: skip
    with ProcessGroup(tmp_path / "logs") as procs:
        server = procs.start("server", cmd, env=flower_env(tmp_path / "home"), cwd=REPO)
        wait_until(lambda: "Ctrl-C stops everything" in procs.log("server"), 90, "the server side", [server])
        wait_until(lambda: _post(device_port, "/v1/fleet/get-run", creds.ca_cert)[0] == 401, 30, "proxy")
        assert health_ok("127.0.0.1", port, creds.ca_cert)  # the SuperLink, on loopback
        assert _post(device_port, "/v1/control/list-runs", creds.ca_cert)[0] == 403
        assert _post(port, "/v1/runtime/acquire-task", creds.ca_cert)[0] == 401  # the secret is in force
        family = procs.track()
        assert len(family) >= 4, family  # the launcher, SuperLink, SuperExec, nginx (master and worker)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        wait_until(lambda: not procs.track(), 30, "every process of the server side to exit")
    assert "stopping" in procs.log("server")
