"""Real Flower simulations on the Ray backend (few rounds, small data): the model learns, files are written."""

from __future__ import annotations

import csv
import json

import pytest

from resam_flower.simulation import simulate

pytestmark = pytest.mark.slow


def test_resam_learns_under_attack_on_ray(tmp_path):
    summary = simulate(
        {
            "dataset": "digits", "model": "mlp", "num-clients": 6, "num-byzantine": 1, "attack": "alie",
            "aggregator": "nnm+cwtm", "momentum": 0.9, "lr": 0.5, "batch-size": 16, "num-server-rounds": 25,
            "eval-every": 5, "results-dir": str(tmp_path), "run-name": "ray-run",
        }
    )
    assert summary["initial_test_accuracy"] < 0.3
    assert summary["final_test_accuracy"] > 0.75
    assert summary["rounds"] == 25 and summary["skipped_rounds"] == 0
    assert len(summary["byzantine_nodes"]) == 1
    run_dir = tmp_path / "ray-run"
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["final_test_accuracy"] == summary["final_test_accuracy"]
    assert saved["config"]["aggregator"] == "nnm+cwtm" and "excluded_replies" in saved
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 25 and {"round", "valid", "test-accuracy", "byzantine-replies"} <= set(rows[0])
    assert all(int(float(r["valid"])) == 6 for r in rows)
