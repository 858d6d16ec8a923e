"""Flower's deployment runtime on loopback: SuperLink + SuperNodes with TLS and SuperNode authentication.

One ``flower-superlink`` (TLS, ``--enable-supernode-auth``), four registered ``flower-supernode`` processes
(one of them Byzantine by its node config, ``byzantine='sf'``), one SuperNode whose key was never registered,
and ``flwr run .`` from the repository root against that SuperLink: a few rounds of ResilientAveraging
(NNM + CWTM) with worker momentum on digits/MLP. Everything listens on 127.0.0.1 on ports picked at run
time, each process has its own ``FLWR_HOME``, every wait is bounded, and all processes (with the SuperExec,
ServerApp and ClientApp processes they spawn) are stopped in a ``finally`` even when an assertion fails.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resam_flower.deploy.credentials import generate_credentials
from resam_flower.deploy.processes import ProcessGroup, flower_env, free_port, health_ok, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
ROUNDS = 3
HONEST = 3
CONNECTION = "resam-tls"


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} not installed next to {sys.executable}")
    return str(path)


def _flower_config(cli_home: Path, port: int, ca_cert: Path) -> None:
    """The ``flwr`` CLI's SuperLink connection (Flower 1.42 keeps it in ``$FLWR_HOME/config.toml``)."""
    cli_home.mkdir(parents=True, exist_ok=True)
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{HOST}:{port}"\nroot-certificates = "{ca_cert}"\n'
    )


def test_tls_authenticated_federation_with_a_byzantine_supernode(tmp_path):
    flwr, superlink_bin, supernode_bin = _tool("flwr"), _tool("flower-superlink"), _tool("flower-supernode")
    t0 = time.monotonic()
    creds = generate_credentials(tmp_path / "certs", nodes=HONEST + 2)  # the last key is never registered
    port = free_port(HOST)
    cli_home = tmp_path / "cli"
    _flower_config(cli_home, port, creds.ca_cert)
    results = tmp_path / "results"
    procs = ProcessGroup(tmp_path / "logs")
    try:
        # SuperLink: TLS on its single HTTPS port (Fleet, Control, Runtime APIs), SuperNode auth on.
        (tmp_path / "link").mkdir()
        link = procs.start(
            "superlink",
            [
                superlink_bin,
                "--ssl-ca-certfile", str(creds.ca_cert),
                "--ssl-certfile", str(creds.server_cert),
                "--ssl-keyfile", str(creds.server_key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host", HOST,
                "--port", str(port),
                "--database", str(tmp_path / "link" / "state.db"),
            ],
            env=flower_env(tmp_path / "link"),
            cwd=tmp_path / "link",
        )
        wait_until(lambda: health_ok(HOST, port, creds.ca_cert), 90, "SuperLink (TLS)", [link])
        t_link = time.monotonic() - t0
        assert not health_ok(HOST, port), "the SuperLink must not answer plain HTTP"

        # Register the SuperNodes' public keys through the Control API (flwr CLI), all at once.
        registered = creds.node_public_keys[: HONEST + 1]
        registrations = [
            subprocess.Popen(
                [flwr, "supernode", "register", str(key), CONNECTION, "--format", "json"],
                env=flower_env(cli_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for key in registered
        ]
        for reg in registrations:
            out, _ = reg.communicate(timeout=90)
            assert reg.returncode == 0 and '"success": true' in out, out

        # SuperNodes: partition i of HONEST + 1; the last one flips the sign of its momentum.
        for i, key in enumerate(creds.node_private_keys[: HONEST + 1]):
            node_config = f"partition-id={i} num-partitions={HONEST + 1}"
            if i == HONEST:
                node_config += " byzantine='sf'"
            home = tmp_path / f"node-{i}"
            home.mkdir()
            procs.start(
                f"supernode-{i}",
                [
                    supernode_bin,
                    "--superlink", f"{HOST}:{port}",
                    "--root-certificates", str(creds.ca_cert),
                    "--auth-supernode-private-key", str(key),
                    "--node-config", node_config,
                    "--port", str(free_port(HOST)),
                ],
                env=flower_env(home),
                cwd=home,
            )
        intruder_home = tmp_path / "intruder"
        intruder_home.mkdir()
        intruder = procs.start(
            "intruder",
            [
                supernode_bin,
                "--superlink", f"{HOST}:{port}",
                "--root-certificates", str(creds.ca_cert),
                "--auth-supernode-private-key", str(creds.node_private_keys[-1]),
                "--node-config", "partition-id=0 num-partitions=4",
                "--port", str(free_port(HOST)),
                "--max-retries", "2",
                "--max-wait-time", "30",
            ],
            env=flower_env(intruder_home),
            cwd=intruder_home,
        )

        # The run: `flwr run .` from the repository root against the TLS connection.
        run_config = (
            f"num-server-rounds={ROUNDS} dataset='digits' model='mlp' num-clients={HONEST + 1} "
            "num-byzantine=1 attack='none' aggregator='nnm+cwtm' momentum=0.9 lr=1.0 batch-size=32 "
            f"eval-every=1 seed=0 results-dir='{results}' run-name='deployment'"
        )
        t_run = time.monotonic() - t0
        run = procs.start(
            "flwr-run",
            [flwr, "run", ".", CONNECTION, "--stream", "--run-config", run_config],
            env=flower_env(cli_home),
            cwd=REPO,
        )
        summary_path = results / "deployment" / "summary.json"
        wait_until(summary_path.exists, 240, f"summary.json (flwr run log:\n{procs.log('flwr-run')[-3000:]})")
        wait_until(lambda: run.poll() is not None, 60, "flwr run --stream to end")
        wait_until(lambda: intruder.poll() is not None, 60, "the unregistered SuperNode to give up")
        elapsed = time.monotonic() - t0
    finally:
        procs.stop()

    summary = json.loads(summary_path.read_text())
    rows = list(csv.DictReader((results / "deployment" / "metrics.csv").open()))
    # The model improved: test loss falls every round, accuracy rises above the random-init level.
    losses = [float(r["test-loss"]) for r in rows]
    assert summary["rounds"] == ROUNDS and summary["skipped_rounds"] == 0, summary
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert summary["final_test_accuracy"] > summary["initial_test_accuracy"] + 0.05, summary
    # Only the four registered nodes took part; the Byzantine reply is well-formed, so none was excluded.
    assert [int(float(r["received"])) for r in rows] == [HONEST + 1] * ROUNDS
    assert [int(float(r["valid"])) for r in rows] == [HONEST + 1] * ROUNDS
    assert summary["excluded_replies"] == 0 and summary["byzantine_nodes"] == []
    # The attack happened, from the node's own config: one sign-flipped reply per round, from that node only.
    assert procs.log(f"supernode-{HONEST}").count("sent a sf-corrupted update") == ROUNDS
    for i in range(HONEST):
        assert "corrupted update" not in procs.log(f"supernode-{i}")
    # The SuperNode with an unregistered key was refused.
    assert intruder.returncode not in (0, None)
    assert "Failed to activate SuperNode" in procs.log("intruder"), procs.log("intruder")[-2000:]
    print(
        f"deployment: SuperLink up at {t_link:.0f}s, flwr run at {t_run:.0f}s, done at {elapsed:.0f}s; "
        f"test accuracy {summary['initial_test_accuracy']:.3f} -> {summary['final_test_accuracy']:.3f}"
    )
    shutil.rmtree(tmp_path / "certs", ignore_errors=True)  # private keys do not outlive the test
