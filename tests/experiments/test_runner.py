"""Sweep runner without Ray (fake simulate): result files, resume, changed configs, failures, progress."""

from __future__ import annotations

import json

from resam_flower.experiments import Sweep, is_finished, run_sweep
from resam_flower.experiments import runner as runner_module
from resam_flower.experiments.hooks import quiet_flower
from resam_flower.strategies import ResilientAveraging
from tests.experiments.conftest import BASE


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


def test_progress_follows_the_rounds_through_simulates_on_round(tmp_path, fake_simulate, monkeypatch):
    original = ResilientAveraging.aggregate_train
    ticks = []
    real_timing = runner_module._timing

    def timing(t_call, t_end, marks, summary):
        ticks.append(len(marks))
        assert ResilientAveraging.aggregate_train is original  # nothing is wrapped at runtime any more
        return real_timing(t_call, t_end, marks, summary)

    monkeypatch.setattr(runner_module, "_timing", timing)
    results = run(sweep(aggregator=["cwtm"], momentum=[0.0, 0.9]), tmp_path)
    rounds = BASE["num-server-rounds"]
    assert [r.status for r in results] == ["done", "done"]
    assert ticks == [rounds, rounds]  # one progress mark per on_round call
    assert fake_simulate.rounds == [(r.cell.name, k) for r in results for k in range(1, rounds + 1)]
    for r in results:
        assert r.timing["round_s"] >= 0 and r.timing["startup_s"] >= 0 and r.timing["teardown_s"] >= 0


def test_a_failing_progress_callback_fails_the_cell_not_the_sweep(tmp_path, fake_simulate, monkeypatch):
    import tqdm.auto

    class BrokenBar(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.per_round = kwargs.get("unit") == "round"

        def update(self, n=1):
            if self.per_round:
                raise RuntimeError("terminal gone")
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", BrokenBar)
    results = run(sweep(aggregator=["cwtm"], momentum=[0.0, 0.9]), tmp_path)
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("terminal gone" in r.error for r in results)  # reported, and the next cell still ran


def test_quiet_flower_drops_info_and_keeps_errors(caplog):
    import logging

    logger = logging.getLogger("flwr")
    with caplog.at_level(logging.INFO, logger="flwr"), quiet_flower():
        logger.info("info line")
        logger.error("error line")
    messages = [r.getMessage() for r in caplog.records]
    assert "error line" in messages and "info line" not in messages
