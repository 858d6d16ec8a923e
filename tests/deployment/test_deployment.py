"""Flower's deployment runtime on loopback, hardened: the SuperNodes train through the Fleet-only proxy.

One ``flower-superlink`` bound to 127.0.0.1 (TLS, ``--enable-supernode-auth``, SuperExec authentication)
with its ``flower-superexec``, the nginx proxy that forwards only the Fleet API, four registered
``flower-supernode`` processes dialling the proxy (one of them Byzantine by its node config,
``byzantine='sf'``), one SuperNode whose key was never registered and one without a key (both through the
proxy), and ``flwr run .`` from the repository root against the SuperLink's loopback Control API: a few
rounds of ResilientAveraging
(NNM + CWTM) with worker momentum on digits/MLP. Everything listens on 127.0.0.1 on ports picked at run
time, each process has its own ``FLWR_HOME``, every wait is bounded, and all processes (with the SuperExec,
ServerApp and ClientApp processes they spawn) are stopped in a ``finally`` even when an assertion fails.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from resam_flower.deploy.loopback import LoopbackFederation
from resam_flower.deploy.processes import health_ok, wait_until
from resam_flower.deploy.proxy import NGINX_INSTALL_HINT, nginx_binary

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 3
HONEST = 3


def test_tls_authenticated_federation_with_a_byzantine_supernode(tmp_path):
    for tool in ("flwr", "flower-superlink", "flower-supernode"):
        if not (Path(sys.executable).parent / tool).exists():
            pytest.fail(f"{tool} not installed next to {sys.executable}: run `make setup`", pytrace=False)
    try:
        nginx_binary()
    except FileNotFoundError:
        pytest.fail(f"the deployment test needs nginx: {NGINX_INSTALL_HINT}", pytrace=False)
    t0 = time.monotonic()
    results = tmp_path / "results"
    with LoopbackFederation(tmp_path, num_keys=HONEST + 2) as fed:  # the last key is never registered
        # SuperLink: TLS on its single HTTPS port (Fleet, Control, Runtime APIs), SuperNode auth on; the
        # SuperNodes dial the proxy's port, not the SuperLink's.
        fed.start_superlink()
        t_link = time.monotonic() - t0
        assert not health_ok("127.0.0.1", fed.port), "the SuperLink must not answer plain HTTP"
        assert fed.fleet_address == f"127.0.0.1:{fed.proxy_port}" != fed.address
        # Register the SuperNodes' public keys through the Control API (flwr supernode register).
        fed.register(fed.creds.node_public_keys[: HONEST + 1])
        # SuperNodes: partition i of HONEST + 1; the last one flips the sign of its momentum.
        for i, key in enumerate(fed.creds.node_private_keys[: HONEST + 1]):
            node_config = f"partition-id={i} num-partitions={HONEST + 1}"
            node_config += " byzantine='sf'" if i == HONEST else ""
            fed.start_supernode(f"supernode-{i}", key, node_config)
        bounded = ("--max-retries", "2", "--max-wait-time", "30")
        intruders = {
            "intruder": fed.start_supernode(
                "intruder", fed.creds.node_private_keys[-1], "partition-id=0 num-partitions=4", *bounded
            ),
            "keyless": fed.start_supernode("keyless", None, "partition-id=0 num-partitions=4", *bounded),
        }
        # The run: `flwr run .` from the repository root against the TLS connection.
        t_run = time.monotonic() - t0
        run_config = (
            f"num-server-rounds={ROUNDS} dataset='digits' model='mlp' num-clients={HONEST + 1} "
            "num-byzantine=1 attack='none' aggregator='nnm+cwtm' momentum=0.9 lr=1.0 batch-size=32 "
            f"eval-every=1 seed=0 results-dir='{results}' run-name='deployment'"
        )
        run = fed.flwr_run(REPO, run_config)
        summary_path = results / "deployment" / "summary.json"
        try:
            wait_until(summary_path.exists, 360, "summary.json", [run])
            wait_until(lambda: run.poll() is not None, 60, "flwr run --stream to end")
            refused = lambda: all(p.poll() is not None for p in intruders.values())  # noqa: E731
            wait_until(refused, 60, "the intruders to give up")
        finally:
            logs = {name: fed.procs.log(name) for name in fed.procs.procs}
            proxied = (tmp_path / "proxy" / "access.log").read_text()
            if not summary_path.exists():
                for name, text in logs.items():
                    print(f"----- {name} -----\n{text[-2000:]}")
        elapsed = time.monotonic() - t0

    summary = json.loads(summary_path.read_text())
    rows = list(csv.DictReader((results / "deployment" / "metrics.csv").open()))
    # The model improved: test loss falls every round, accuracy rises above the random-init level.
    losses = [float(r["test-loss"]) for r in rows]
    assert summary["rounds"] == ROUNDS and summary["skipped_rounds"] == 0, summary
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # well above chance (0.10 on 10 digits): 0.117 -> 0.326 measured after 3 rounds (seed 0; the run is seeded
    # and replies are aggregated in node-id order, so another CPU moves it by rounding only)
    assert summary["final_test_accuracy"] >= 0.25, summary
    # Only the four registered nodes took part; the Byzantine reply is well-formed, so none was excluded.
    assert [int(float(r["received"])) for r in rows] == [HONEST + 1] * ROUNDS
    assert [int(float(r["valid"])) for r in rows] == [HONEST + 1] * ROUNDS
    assert summary["excluded_replies"] == 0 and summary["byzantine_nodes"] == []
    # The attack happened, from the node's own config: one sign-flipped reply per round, from that node only.
    assert logs[f"supernode-{HONEST}"].count("sent a sf-corrupted update") == ROUNDS
    for i in range(HONEST):
        assert "corrupted update" not in logs[f"supernode-{i}"]
    # The SuperNode with an unregistered key was refused by the SuperLink, the one with no key by the proxy.
    assert intruders["intruder"].returncode not in (0, None)
    assert "could not establish a connection to the SuperLink" in logs["intruder"], logs["intruder"][-2000:]
    assert "Failed to activate SuperNode" in logs["intruder"]
    assert intruders["keyless"].returncode is not None
    assert re.search(r'"POST /v1/fleet/register-node HTTP/1.1" 401 ', proxied)  # its self-registration
    assert logs["superlink"].count("[Fleet.ActivateNode] Activated node_id=") == HONEST + 1  # no one else
    # Everything the SuperNodes did went through the proxy: pulls, replies, objects, all Fleet routes.
    for route in ("activate-node", "pull-messages", "push-messages", "push-object", "pull-object"):
        assert re.search(rf'"POST /v1/fleet/{route} HTTP/1.1" 200 ', proxied), route
    assert not re.search(r'"POST /v1/(control|runtime)/', proxied)
    assert not re.search(r'" 5\d\d ', proxied), "the proxy failed requests"  # e.g. no buffer file allowed
    assert not re.search(r"\[(crit|alert|emerg)\]", (tmp_path / "proxy" / "error.log").read_text())
    print(
        f"deployment: SuperLink up at {t_link:.0f}s, flwr run at {t_run:.0f}s, done at {elapsed:.0f}s; "
        f"test accuracy {summary['initial_test_accuracy']:.3f} -> {summary['final_test_accuracy']:.3f}"
    )
    shutil.rmtree(fed.creds.ca_cert.parent, ignore_errors=True)  # private keys do not outlive the test
