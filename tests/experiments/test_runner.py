"""Sweep runner: result files, resume, changed configs, failures, progress (fake simulate, no Ray); the
in-process engine with several cells at once equals the sequential sweep, cell for cell."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys

import pytest

from resam_flower.experiments import Sweep, is_finished, run_sweep
from resam_flower.experiments import runner as runner_module
from resam_flower.experiments.hooks import quiet_flower
from resam_flower.experiments.runner import resolve_engine
from resam_flower.strategies import ResilientAveraging
from tests.experiments.conftest import BASE, write_sweep_file


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


def test_where_runs_the_cells_with_those_config_values(tmp_path, fake_simulate):
    s = sweep(aggregator=["cwtm", "mda"], momentum=[0.0, 0.9], seed=[0, 1])
    expected = {c.name for c in s.cells(tmp_path) if c.config["momentum"] == 0.9 and c.config["seed"] == 1}
    assert len(expected) == 2
    results = run(s, tmp_path, where={"momentum": "0.9", "seed": "1"})
    assert {r.cell.name for r in results} == expected and [r.status for r in results] == ["done"] * 2
    assert sorted((c["aggregator"], c["momentum"], c["seed"]) for c in fake_simulate) == [
        ("cwtm", 0.9, 1), ("mda", 0.9, 1)
    ]
    # with --only too: both must hold
    assert [r.cell.config["aggregator"] for r in run(s, tmp_path, only=["mda"], where={"seed": "0"})] == [
        "mda", "mda"
    ]
    assert len(fake_simulate) == 4


def test_where_reads_a_key_the_file_leaves_at_its_default(tmp_path, fake_simulate):
    # BASE sets no partitioner: every cell runs the default ("iid"), as its summary.json records
    assert "partitioner" not in BASE
    assert len(run(sweep(), tmp_path, where={"partitioner": "iid"})) == 4
    with pytest.raises(ValueError, match="matches --where partitioner=dirichlet"):
        run(sweep(), tmp_path, where={"partitioner": "dirichlet"})


@pytest.mark.parametrize(
    "selection, message",
    [
        ({"where": {"momentun": "0.9"}}, "'momentun' is not a run-config key of sweep 't'"),
        ({"where": {"momentum": "0.5"}}, "no cell of sweep 't' (4 cells) matches --where momentum=0.5"),
        ({"only": ["cwmt"]}, "--only cwmt: no cell of sweep 't' (4 cells) has 'cwmt' in its name"),
    ],
)
def test_a_selection_that_matches_nothing_fails_instead_of_running_nothing(
    tmp_path, fake_simulate, selection, message
):
    with pytest.raises(ValueError, match=re.escape(message)):
        run(sweep(), tmp_path, **selection)
    assert fake_simulate == []


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


# -- the in-process engine, several cells at once ---------------------------------------------------------
REAL = {
    "dataset": "digits",
    "model": "mlp",
    "num-clients": 6,
    "num-byzantine": 1,
    "attack": "alie",
    "attack-params": "z='karimireddy'",
    "lr": 0.5,
    "batch-size": 16,
    "num-server-rounds": 3,
    "eval-every": 3,
}


def real_sweep(name="p", rounds=3):
    # 4 real cells, and one that fails when it runs (ALIE has no parameter 'bogus'; the grid accepts it)
    return Sweep(
        name,
        {**REAL, "num-server-rounds": rounds},
        {"aggregator": ["cwtm", "nnm+cwtm"], "momentum": [0.0, 0.9]},
        include=[{"aggregator": "cwtm", "momentum": 0.0, "attack-params": "bogus=1"}],
    )


def test_parallel_cells_equal_sequential_ones_and_a_failed_cell_is_retried(tmp_path):
    s = real_sweep()
    seq = run_sweep(s, tmp_path / "seq", progress=False, engine="inprocess")  # one by one, in this process
    par = run_sweep(s, tmp_path / "par", progress=False, engine="inprocess", jobs=2)
    assert [r.cell.name for r in par] == [r.cell.name for r in seq]
    assert [r.status for r in par] == [r.status for r in seq] == ["done"] * 4 + ["failed"]
    for a, b in zip(seq[:4], par[:4], strict=True):
        assert b.summary["final_model_sha256"] == a.summary["final_model_sha256"], a.cell.name
        assert b.summary["final_test_loss"] == a.summary["final_test_loss"]
        assert is_finished(b.cell)["final_model_sha256"] == a.summary["final_model_sha256"]
    failed = par[4]
    assert "bogus" in failed.error and is_finished(failed.cell) is None
    error_file = tmp_path / "par" / "p" / failed.cell.name / "error.txt"
    assert "bogus" in error_file.read_text()
    error_file.unlink()
    again = run_sweep(s, tmp_path / "par", progress=False, engine="inprocess", jobs=2)
    assert [r.status for r in again] == ["cached"] * 4 + ["failed"]  # the failed cell is run again
    assert "bogus" in error_file.read_text()


def test_engine_choice_and_its_limits(tmp_path, fake_simulate):
    s = sweep()
    with pytest.raises(ValueError, match="one cell at a time"):
        run(s, tmp_path, jobs=2)  # the Ray engine (the default) with several jobs
    with pytest.raises(ValueError, match="unknown engine"):
        run(s, tmp_path, engine="threads")
    with pytest.raises(ValueError, match=">= 1"):
        run(s, tmp_path, engine="inprocess", jobs=0)
    assert not fake_simulate and not (tmp_path / "t").exists()  # refused before anything ran
    assert resolve_engine(s) == "ray" and resolve_engine(s, "inprocess") == "inprocess"
    s.engine = "inprocess"
    assert resolve_engine(s) == "inprocess" and resolve_engine(s, "ray") == "ray"
    run(s, tmp_path, only=["cwtm__b0.9"], engine="ray")
    assert len(fake_simulate) == 1  # engine = "ray" goes through simulation.simulate


def test_a_cell_picks_its_engine_and_the_flag_overrides_it(tmp_path, fake_simulate, monkeypatch):
    from resam_flower.experiments import engine as engine_module
    from tests.experiments.conftest import write_fake_run

    local: list[str] = []

    def in_process(config, *, verbose=False, on_round=None, **_):
        local.append(config["run-name"])
        return write_fake_run(config)

    monkeypatch.setattr(engine_module, "simulate_in_process", in_process)
    s = Sweep("t", BASE, {"aggregator": ["cwtm", "mda"]},
              include=[{"aggregator": "cwtm", "num-clients": 9, "engine": "ray"}])
    s.engine = "inprocess"
    cells = s.cells(tmp_path)
    assert [c.engine for c in cells] == ["", "", "ray"]
    assert [c.name for c in cells] == ["n7__cwtm", "n7__mda", "n9__cwtm"]  # the engine is not in the name
    assert all("engine" not in c.config for c in cells)  # nor in the run config
    assert [r.status for r in run(s, tmp_path)] == ["done"] * 3
    assert local == ["n7__cwtm", "n7__mda"] and [c["run-name"] for c in fake_simulate] == ["n9__cwtm"]
    run(s, tmp_path / "flag", engine="inprocess")  # --engine: every cell, whatever it asked for
    assert local[2:] == ["n7__cwtm", "n7__mda", "n9__cwtm"] and len(fake_simulate) == 1
    run(s, tmp_path / "all-ray", engine="ray")
    assert len(local) == 5 and len(fake_simulate) == 4
    every_ray = Sweep("r", {**BASE, "engine": "ray"}, {"aggregator": ["cwtm", "mda"]}, engine="inprocess")
    with pytest.raises(ValueError, match="one cell at a time"):
        run(every_ray, tmp_path, jobs=2)  # every cell asked for Ray: nothing to run side by side
    bad = Sweep("t", BASE, {"aggregator": ["cwtm"]}, include=[{"engine": "threads"}])
    with pytest.raises(ValueError, match="engine = 'threads'; expected one of ray, inprocess"):
        bad.cells(tmp_path)


@pytest.mark.slow
def test_parallel_in_process_sweep_equals_the_sequential_ray_sweep(tmp_path):
    s = real_sweep("q")
    ray = run_sweep(s, tmp_path / "ray", progress=False)  # today's sweep: Flower's Ray simulation
    par = run_sweep(s, tmp_path / "par", progress=False, engine="inprocess", jobs=2)
    assert [r.status for r in ray] == [r.status for r in par] == ["done"] * 4 + ["failed"]
    for a, b in zip(ray[:4], par[:4], strict=True):
        assert b.summary["final_model_sha256"] == a.summary["final_model_sha256"], a.cell.name
        assert b.summary["byzantine_nodes"] == a.summary["byzantine_nodes"]


def _parallel_sweep(tmp_path, name: str, base: dict, grid: str) -> list[str]:
    """The command of `resam sweep` over a sweep file written in ``tmp_path``: 2 jobs, results in ``r/``."""
    toml = tmp_path / f"{name}.toml"
    write_sweep_file(toml, name, base, grid, engine="inprocess")
    return [sys.executable, "-m", "resam_flower.cli", "sweep", str(toml), "--results", str(tmp_path / "r"),
            "--jobs", "2", "--no-report", "--no-progress"]


@pytest.mark.slow
def test_killed_parallel_sweep_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import time

    cmd = _parallel_sweep(tmp_path, "k", {**REAL, "num-server-rounds": 25},
                          'aggregator = ["cwtm", "nnm+cwtm", "cwmed"]\nmomentum = [0.0, 0.9]\n')
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    cells = list((tmp_path / "r" / "k").glob("*/summary.json"))
    deadline = time.time() + 240
    while not cells and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        cells = list((tmp_path / "r" / "k").glob("*/summary.json"))
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its cell processes (their own session)
    proc.wait()
    done_before = {p.parent.name for p in (tmp_path / "r" / "k").glob("*/summary.json")}
    assert 1 <= len(done_before) < 6
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{6 - len(done_before)} cells run, {len(done_before)} already finished, 0 failed" in out.stdout
    from resam_flower.experiments import load_sweep

    s = load_sweep(tmp_path / "k.toml")
    seq = run_sweep(s, tmp_path / "seq", progress=False)  # the sequential sweep (engine from the file)
    for r in seq:
        resumed = json.loads((tmp_path / "r" / "k" / r.cell.name / "summary.json").read_text())
        assert resumed["final_model_sha256"] == r.summary["final_model_sha256"], r.cell.name


def _spawned_children(pid: int) -> list[int]:
    """Pids of ``multiprocessing`` spawn workers whose parent is ``pid`` (Linux /proc)."""
    from pathlib import Path

    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(ln for ln in status.read_text().splitlines() if ln.startswith("PPid:")).split()[1]
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, StopIteration):
            continue
        if int(ppid) == pid and b"multiprocessing.spawn" in cmdline:
            out.append(int(status.parent.name))
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            return b"zombie" not in fh.read().lower()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_cell_processes_die_with_a_killed_driver(tmp_path):
    # A driver killed alone (not its process group: `kill PID`, an OOM kill) used to leave its cell
    # processes running their cells to the end, writing results and taking the CPUs of the resumed sweep.
    import os
    import signal
    import subprocess
    import time

    grid = 'aggregator = ["cwtm", "cwmed"]\n'
    cmd = _parallel_sweep(tmp_path, "d", {**REAL, "num-server-rounds": 2000}, grid)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        children = _spawned_children(proc.pid)
        while len(children) < 2 and time.time() < deadline:
            time.sleep(0.2)
            children = _spawned_children(proc.pid)
        assert len(children) == 2, "the sweep never started its two cell processes"
        while min(_cpu_seconds(p) for p in children) < 4 and time.time() < deadline:  # both are training
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only
        proc.wait()
        deadline = time.time() + 20
        alive = children
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [p for p in children if _running(p)]
        assert not alive, f"cell processes {alive} outlived their driver"
        assert not list((tmp_path / "r" / "d").glob("*/summary.json"))  # they did not finish their cells
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_cell_bars_follow_each_running_cell():
    import queue

    s = Sweep("b", {**BASE, "num-server-rounds": 5}, {"aggregator": ["cwtm", "mda", "gm"]})
    assert [c.name for c in s.cells()] == ["cwtm", "mda", "gm"]
    bars = runner_module.CellBars(s.cells(), enabled=False)
    q: queue.Queue = queue.Queue()
    for item in [("cwtm", 1, None), ("mda", 1, None), ("cwtm", 2, 0.5), ("cwtm", 3, None)]:
        q.put(item)
    bars.drain(q)
    assert q.empty() and bars.last == {"cwtm": 3, "mda": 1} and bars.positions == {"cwtm": 1, "mda": 2}
    assert bars.bars["cwtm"].total == 5 and bars.bars["cwtm"].n == 3
    bars.close("cwtm")
    bars.report("gm", 1)  # takes the freed position 1
    assert bars.positions == {"mda": 2, "gm": 1}
    bars.report("cwtm", 5)  # a late report of a finished cell: recorded, no new bar
    assert bars.last["cwtm"] == 5 and "cwtm" not in bars.bars
    bars.close_all()
    assert not bars.bars and not bars.positions


@pytest.mark.slow
def test_parallel_cells_report_their_rounds_to_the_driver(tmp_path, monkeypatch):
    seen: list[tuple[str, int, float | None]] = []

    class Recording(runner_module.CellBars):
        def report(self, name, server_round, accuracy=None):
            seen.append((name, server_round, accuracy))
            super().report(name, server_round, accuracy)

    monkeypatch.setattr(runner_module, "CellBars", Recording)
    s = Sweep("b", {**REAL, "num-server-rounds": 6, "eval-every": 3}, {"aggregator": ["cwtm", "cwmed"]})
    results = run_sweep(s, tmp_path, progress=False, engine="inprocess", jobs=2)
    assert [r.status for r in results] == ["done"] * 2
    for r in results:
        mine = [(rnd, acc) for name, rnd, acc in seen if name == r.cell.name]
        assert [rnd for rnd, _ in mine] == [1, 2, 3, 4, 5, 6], r.cell.name
        import csv

        with (tmp_path / "b" / r.cell.name / "metrics.csv").open() as fh:
            evaluated = {int(row["round"]): float(row["test-accuracy"]) for row in csv.DictReader(fh)
                         if row["test-accuracy"]}
        assert {rnd: acc for rnd, acc in mine if acc is not None} == evaluated == {
            3: pytest.approx(evaluated[3]), 6: pytest.approx(r.summary["final_test_accuracy"])}
