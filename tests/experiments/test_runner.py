"""Sweep runner without Ray (fake simulate): result files, resume, config changes, failures, round hook."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ConfigRecord

from resam_flower.experiments import Sweep, is_finished, run_sweep
from resam_flower.experiments.hooks import quiet_flower, round_callback
from resam_flower.strategies import ResilientAveraging
from tests.experiments.conftest import BASE
from tests.flower_helpers import FakeGrid, record, reply


def sweep(**grid):
    return Sweep("t", BASE, grid or {"aggregator": ["cwtm", "mda"], "momentum": [0.0, 0.9]})


def run(s, root, **kw):
    return run_sweep(s, root, progress=False, share_ray=False, **kw)


def test_every_cell_runs_once_and_writes_its_files(tmp_path, fake_simulate):
    results = run(sweep(), tmp_path)
    assert [r.status for r in results] == ["done"] * 4 and len(fake_simulate) == 4
    for r in results:
        cell_dir = tmp_path / "t" / r.cell.name
        assert {"config.json", "metrics.csv", "summary.json", "timing.json"} <= {
            p.name for p in cell_dir.iterdir()
        }
        timing = json.loads((cell_dir / "timing.json").read_text())
        assert timing["total_s"] >= timing["rounds_s"] >= 0 and "round_s" in timing and "startup_s" in timing
        assert is_finished(r.cell)["final_test_accuracy"] == r.summary["final_test_accuracy"]
    manifest = json.loads((tmp_path / "t" / "sweep.json").read_text())
    assert [c["name"] for c in manifest["cells"]] == [r.cell.name for r in results]


def test_resume_skips_finished_cells(tmp_path, fake_simulate):
    s = sweep()
    first = run(s, tmp_path, only=["cwtm"])
    assert len(first) == 2 and len(fake_simulate) == 2
    # "interrupted" after two cells: the rerun only runs the other two
    second = run(s, tmp_path)
    assert len(fake_simulate) == 4
    assert sorted(r.status for r in second) == ["cached", "cached", "done", "done"]
    assert {r.cell.name for r in second if r.status == "cached"} == {c.cell.name for c in first}
    third = run(s, tmp_path)
    assert len(fake_simulate) == 4 and {r.status for r in third} == {"cached"}
    assert run(s, tmp_path, resume=False) and len(fake_simulate) == 8


def test_changed_config_or_partial_cell_is_rerun(tmp_path, fake_simulate):
    s = sweep()
    run(s, tmp_path)
    s.base = {**BASE, "lr": 0.05}  # every cell's config changes: nothing is finished any more
    assert {r.status for r in run(s, tmp_path)} == {"done"} and len(fake_simulate) == 8
    cell = s.cells(tmp_path)[0]
    summary_path = tmp_path / "t" / cell.name / "summary.json"
    summary_path.write_text("{not json")  # a corrupt summary is not a finished cell
    assert is_finished(cell) is None
    summary_path.unlink()  # neither is a folder without summary.json (metrics.csv alone)
    assert is_finished(cell) is None
    statuses = [r.status for r in run(s, tmp_path)]
    assert statuses.count("done") == 1 and len(fake_simulate) == 9


def test_failed_cell_is_reported_and_the_sweep_goes_on(tmp_path, fake_simulate):
    results = run(sweep(seed=[13, 1]), tmp_path)  # the fake simulate fails for seed 13
    by_name = {r.cell.name: r for r in results}
    assert by_name["s13"].status == "failed" and "simulated failure" in by_name["s13"].error
    assert "RuntimeError" in (tmp_path / "t" / "s13" / "error.txt").read_text()
    assert by_name["s1"].status == "done"
    assert is_finished(by_name["s13"].cell) is None


def test_round_callback_follows_a_real_strategy_and_is_removed():
    seen = []
    original = ResilientAveraging.aggregate_train
    s = ResilientAveraging("mean", lr=1.0, min_train_nodes=2, min_available_nodes=2)
    theta = record(w=np.array([1.0, 2.0], dtype=np.float32))
    with round_callback(lambda rnd, entry: seen.append((rnd, entry["valid"]))):
        assert ResilientAveraging.aggregate_train is not original
        for rnd in (1, 2):
            msgs = list(s.configure_train(rnd, theta, ConfigRecord(), FakeGrid([1, 2])))
            replies = [reply(m, record(w=np.array([0.5, 0.5], np.float32))) for m in msgs]
            out, _ = s.aggregate_train(rnd, replies)
    assert ResilientAveraging.aggregate_train is original
    assert seen == [(1, 2), (2, 2)]
    np.testing.assert_allclose(out["w"].numpy(), [0.5, 1.5])  # the wrapped round still computed the step


def test_quiet_flower_drops_info_and_keeps_errors(caplog):
    import logging

    logger = logging.getLogger("flwr")
    with caplog.at_level(logging.INFO, logger="flwr"), quiet_flower():
        logger.info("info line")
        logger.error("error line")
    messages = [r.getMessage() for r in caplog.records]
    assert "error line" in messages and "info line" not in messages
