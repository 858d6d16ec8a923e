"""Run a sweep: one Flower simulation (Ray backend) per cell, resumable, with progress bars and timings.

A cell is *finished* iff ``<cell>/summary.json`` exists and its recorded config equals the cell's config
(:func:`~resam_flower.experiments.grid.normalized_config`); finished cells are skipped, so an interrupted
sweep started again continues where it stopped, and a cell whose config changed in the TOML is rerun.

Start-up cost: all cells of one ``run_sweep`` call share one Ray instance (:func:`.hooks.shared_ray`),
so Ray's start (the ~14 s floor of Flower's engine on 2 cores) is paid once per sweep instead of once per
cell. Each cell's ``timing.json`` records where its time went (see :func:`_timing`).
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..app.results import atomic_write_text
from .grid import Cell, Sweep, normalized_config
from .hooks import quiet_flower, shared_ray

__all__ = ["CellResult", "run_sweep", "is_finished", "write_manifest"]


@dataclass
class CellResult:
    """What happened to one cell: ``status`` is ``done``, ``cached`` (finished earlier) or ``failed``."""

    cell: Cell
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    error: str = ""


def is_finished(cell: Cell) -> dict[str, Any] | None:
    """The cell's saved summary if it is finished with exactly this config, else ``None``."""
    path = Path(cell.config["results-dir"]) / cell.name / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    saved = summary.get("config")
    if not isinstance(saved, dict):
        return None
    try:
        same = normalized_config(saved) == normalized_config(cell.config)
    except ValueError:
        return None
    return summary if same else None


def write_manifest(sweep: Sweep, cells: list[Cell], directory: Path) -> None:
    """``<sweep dir>/sweep.json``: the file it came from, the grid, and each cell's varying values."""
    manifest = {
        "name": sweep.name,
        "source": sweep.source,
        "description": sweep.description,
        "base": sweep.base,
        "grid": sweep.grid,
        "cells": [{"name": c.name, "varying": c.varying} for c in cells],
    }
    atomic_write_text(directory / "sweep.json", json.dumps(manifest, indent=2, default=str))


class _LineWriter(io.TextIOBase):
    """stdout replacement while bars are drawn: complete lines go through ``tqdm.write`` (or a file)."""

    def __init__(self, sink) -> None:
        self._sink, self._buf = sink, ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._sink(line)
        return len(text)


def _timing(t_call: float, t_end: float, marks: list[float], summary: dict[str, Any]) -> dict[str, float]:
    """Where a cell's time went.

    ``total_s``: the ``simulate`` call. ``rounds_s``: the strategy's own wall time (``summary.json``).
    ``round_s``: median time between two consecutive rounds. ``startup_s``: from the call to the end of
    round 1, minus one typical round (Ray, the ServerApp's data and model, the client actors' start).
    ``overhead_s = total_s - rounds_s``: everything outside ``strategy.start`` (set-up and tear-down).
    """
    total = t_end - t_call
    out = {"total_s": total, "rounds_s": float(summary.get("wall_time_s") or 0.0)}
    out["overhead_s"] = total - out["rounds_s"]
    if marks:
        gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        out["round_s"] = statistics.median(gaps) if gaps else 0.0
        out["startup_s"] = max(marks[0] - t_call - out["round_s"], 0.0)
        out["teardown_s"] = t_end - marks[-1]
    return out


def run_sweep(
    sweep: Sweep,
    results_root: str | Path | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    share_ray: bool = True,
    reuse_actors: bool = True,
    worker_niceness: int | None = 0,
    backend: dict[str, Any] | None = None,
    only: list[str] | None = None,
    verbose: bool = False,
) -> list[CellResult]:
    """Run every unfinished cell of ``sweep`` in this process; return one :class:`CellResult` per cell.

    Parameters
    ----------
    results_root
        Root folder (default: the sweep's ``results``); cells go to ``<root>/<sweep name>/<cell>/``.
    resume
        Skip finished cells (see :func:`is_finished`); ``False`` reruns everything.
    progress
        Draw tqdm bars over cells and over the rounds of the running cell (when stderr is a terminal).
    share_ray
        Start Ray once for all cells (:func:`.hooks.shared_ray`) instead of once per cell.
    reuse_actors
        With ``share_ray``, idle client actors also serve the next cell (no process start per cell).
    worker_niceness
        With ``share_ray``, the nice value of the client actors (0; Ray's default 15 starves them on a busy
        machine; ``None`` keeps Ray's default).
    backend
        Ray backend config for :func:`resam_flower.simulation.simulate` (default: its own).
    only
        Run only the cells whose name contains one of these substrings.
    """
    from tqdm.auto import tqdm

    from ..simulation import backend_config

    cells = sweep.cells(results_root)
    if only:
        cells = [c for c in cells if any(s in c.name for s in only)]
    directory = sweep.directory(results_root)
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(sweep, sweep.cells(results_root), directory)
    backend = backend or backend_config()
    results: list[CellResult] = []
    todo = []
    for cell in cells:
        done = is_finished(cell) if resume else None
        if done is not None:
            results.append(CellResult(cell, "cached", summary=done, timing=_read_timing(cell)))
        else:
            todo.append(cell)
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        desc=f"{sweep.name} cells",
        unit="cell",
        disable=None if progress else True,  # None: no bar when stderr is not a terminal
        position=0,
        dynamic_ncols=True,
    )
    say = tqdm.write if progress else (lambda s: print(s, file=sys.stderr))
    if len(todo) < len(cells):
        say(
            f"[resam] {sweep.name}: {len(cells) - len(todo)} of {len(cells)} cells already finished (skipped)"
        )
    ray_ctx = (
        shared_ray(backend, reuse_actors=reuse_actors, worker_niceness=worker_niceness)
        if share_ray and todo
        else contextlib.nullcontext(0.0)
    )
    log_ctx = contextlib.nullcontext() if verbose else quiet_flower()
    with ray_ctx as ray_init_s, log_ctx:
        if share_ray and todo:
            say(f"[resam] Ray started once for {len(todo)} cell(s) in {ray_init_s:.1f}s")
        for cell in todo:
            results.append(_run_cell(cell, backend, bar, say, progress, verbose))
            bar.update(1)
    bar.close()
    order = {c.name: i for i, c in enumerate(cells)}
    return sorted(results, key=lambda r: order[r.cell.name])


def _read_timing(cell: Cell) -> dict[str, float]:
    try:
        return json.loads((Path(cell.config["results-dir"]) / cell.name / "timing.json").read_text())
    except (OSError, ValueError):
        return {}


def _run_cell(cell: Cell, backend: dict, bar, say, progress: bool, verbose: bool) -> CellResult:
    from tqdm.auto import tqdm

    from .. import simulation  # looked up at call time (tests replace simulation.simulate)

    rounds = int(cell.config.get("num-server-rounds", 200))
    inner = tqdm(
        total=rounds,
        desc=cell.name[:40],
        unit="round",
        leave=False,
        disable=None if progress else True,  # None: no bar when stderr is not a terminal
        position=1,
        dynamic_ncols=True,
    )
    marks: list[float] = []

    def on_round(server_round: int, row: dict[str, Any]) -> None:  # simulate()'s per-round callback
        marks.append(time.perf_counter())
        inner.update(1)
        if "test-accuracy" in row:
            inner.set_postfix_str(f"acc {100 * row['test-accuracy']:.1f}%", refresh=False)

    run_dir = Path(cell.config["results-dir"]) / cell.name
    lines: list[str] = []
    sink = say if verbose else lines.append
    t_call = time.perf_counter()
    try:
        with contextlib.redirect_stdout(_LineWriter(sink)):
            summary = simulation.simulate(cell.config, backend=backend, verbose=verbose, on_round=on_round)
    except Exception as exc:  # noqa: BLE001 - one failed cell does not stop the sweep
        inner.close()
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "error.txt", traceback.format_exc())
        say(
            f"[resam] {cell.name}: FAILED ({type(exc).__name__}: {exc}); traceback in {run_dir / 'error.txt'}"
        )
        return CellResult(cell, "failed", error=f"{type(exc).__name__}: {exc}")
    t_end = time.perf_counter()
    inner.close()
    timing = _timing(t_call, t_end, marks, summary)
    atomic_write_text(run_dir / "timing.json", json.dumps(timing, indent=2))
    (run_dir / "error.txt").unlink(missing_ok=True)
    if lines:
        atomic_write_text(run_dir / "stdout.txt", "\n".join(lines) + "\n")
    acc = summary.get("final_test_accuracy")
    acc_text = "n/a" if acc is None else f"{100 * acc:.2f}%"
    say(
        f"[resam] {cell.name}: test accuracy {acc_text}; {timing['total_s']:.1f}s "
        f"(start-up {timing.get('startup_s', float('nan')):.1f}s, "
        f"{timing.get('round_s', float('nan')):.2f}s/round)"
    )
    bar.set_postfix_str(f"last {acc_text}")
    return CellResult(cell, "done", summary=summary, timing=timing)
