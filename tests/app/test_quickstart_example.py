"""examples/quickstart-resam: Flower's quickstart turned RESAM, run as a user runs it (``flwr run``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resam_flower.deploy.processes import wait_until
from tests.app.local_superlink import BIN, local_superlink

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quickstart-resam"


@pytest.mark.slow
def test_the_quickstart_example_learns_under_flwr_run_and_saves_the_model(tmp_path):
    with local_superlink(tmp_path) as (procs, _):
        run = procs.start(
            "flwr-run",
            [
                str(BIN / "flwr"),
                "run",
                str(EXAMPLE),
                "--stream",
                "--federation-config",
                "num-supernodes=5",
                "--run-config",
                "num-server-rounds=6",
            ],
            cwd=tmp_path,
        )
        wait_until(lambda: run.poll() is not None, 400, "flwr run examples/quickstart-resam to finish")
        log = procs.log("flwr-run")
        assert run.returncode == 0, log[-3000:]
    accuracies = [
        float(line.rsplit("'accuracy': ", 1)[1].split(",")[0])
        for line in log.splitlines()
        if "'accuracy': " in line and "MetricRecord" in line
    ]
    assert accuracies and accuracies[-1] > 0.5, log[-3000:]  # 10 classes: chance is 0.1
    # the clients' metrics under their own names, as FedAvg shows them: train_loss each round, and eval_acc
    # (3 of 5 nodes evaluate: the 2f + 1 replies a robust median needs)
    aggregated = [line for line in log.splitlines() if "Aggregated MetricRecord" in line]
    assert sum("'train_loss'" in line and "'resam-valid'" in line for line in aggregated) == 6, log[-3000:]
    assert sum("'eval_acc'" in line for line in aggregated) == 6, log[-3000:]
    assert "ERROR" not in log.split("Starting ResilientAveraging")[-1], log[-3000:]
    saved = list(tmp_path.rglob("final_model.pt"))
    assert len(saved) == 1, log[-2000:]
    state = torch.load(saved[0], weights_only=True)
    assert set(state) == {
        f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3") for p in ("weight", "bias")
    }
