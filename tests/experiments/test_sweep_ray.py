"""A real sweep on Flower's Ray backend (simulations/tiny.toml: digits, MLP, 4 cells x 4 rounds), resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resam_flower.experiments import load_sweep, run_sweep
from resam_flower.experiments.plots import plot_sweep
from resam_flower.experiments.report import write_report

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[2] / "simulations" / "tiny.toml"


def test_tiny_sweep_on_ray_then_resume(tmp_path):
    import ray

    sweep = load_sweep(TINY)
    rounds_seen = []
    results = run_sweep(sweep, tmp_path, progress=True)  # one Ray, actors reused across the 4 cells
    assert [r.status for r in results] == ["done"] * 4
    assert not ray.is_initialized()  # shut down at the end of the sweep
    for r in results:
        cell_dir = tmp_path / "tiny" / r.cell.name
        summary = json.loads((cell_dir / "summary.json").read_text())
        assert summary["rounds"] == 4 and summary["skipped_rounds"] == 0
        assert summary["config"]["aggregator"] == r.cell.config["aggregator"]
        assert 0.0 <= summary["final_test_accuracy"] <= 1.0
        timing = json.loads((cell_dir / "timing.json").read_text())
        rounds_seen.append(timing)
        assert timing["total_s"] > 0 and {"startup_s", "round_s", "teardown_s"} <= set(timing)
    # the accuracy rises over 4 rounds in at least the beta = 0 cells (beta = 0.9 starts slower)
    assert all(
        r.summary["final_test_accuracy"] > r.summary["initial_test_accuracy"]
        for r in results
        if r.cell.config["momentum"] == 0.0
    )

    again = run_sweep(sweep, tmp_path, progress=False)
    assert [r.status for r in again] == ["cached"] * 4
    assert [r.summary for r in again] == [
        json.loads((tmp_path / "tiny" / r.cell.name / "summary.json").read_text()) for r in again
    ]

    # reused actors change nothing: the same cell alone, with its own Ray and fresh actors, gives the same run
    alone = run_sweep(sweep, tmp_path, resume=False, share_ray=False, progress=False, only=["nnm_cwtm__b0.9"])
    first = next(r for r in results if r.cell.name == "nnm_cwtm__b0.9")
    assert alone[0].status == "done"
    assert alone[0].summary["final_test_accuracy"] == first.summary["final_test_accuracy"]
    assert alone[0].summary["final_test_loss"] == first.summary["final_test_loss"]

    text, _ = write_report(tmp_path / "tiny")
    assert "| cwtm | 0 |" in text and "| nnm+cwtm | 0.9 |" in text
    names = sorted(p.name for p in plot_sweep(tmp_path / "tiny"))
    assert names == ["curves.png", "heatmap_β.png"]
