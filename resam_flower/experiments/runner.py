"""Run a sweep: one simulation per cell, resumable, with progress bars and timings, one cell or many at once.

A cell is *finished* iff ``<cell>/summary.json`` exists and its recorded config equals the cell's config
(:func:`~resam_flower.experiments.grid.normalized_config`); finished cells are skipped, so an interrupted
sweep started again continues where it stopped, and a cell whose config changed in the TOML is rerun.

Start-up cost: all cells of one ``run_sweep`` call share one Ray instance (:func:`.hooks.shared_ray`),
so Ray's start (the ~14 s floor of Flower's engine on 2 cores) is paid once per sweep instead of once per
cell. Each cell's ``timing.json`` records where its time went (see :func:`_timing`).

Engines (``engine``, the sweep file's ``[sweep] engine``, a cell's own ``engine`` key, or ``resam sweep
--engine`` which overrides both): ``"ray"`` runs each
cell in Flower's Ray simulation (:func:`resam_flower.simulation.simulate`), one cell at a time, spread over
the machine by Ray; ``"inprocess"`` runs it in one process (:func:`.engine.simulate_in_process`, the same
ServerApp, ClientApp and mods, bit-identical final models). With ``jobs = K > 1`` (in-process engine only),
K cells run at once, each in its own process (``spawn``) pinned to ``threads_per_cell`` intra-op threads;
a cell's results do not depend on which process ran it or on how many ran beside it; cells whose engine is
``"ray"`` then run one at a time in this process. Resume and failures
work as in a sequential sweep: a cell is finished once its ``summary.json`` is written, a failed cell writes
``error.txt`` and is run again by the next ``run_sweep``, and the other cells go on.

With ``ray_address`` the same loop (:func:`_run_parallel` over a :class:`CellExecutor`) runs the cells as
Ray tasks on an existing cluster (:class:`.cluster.RayTasks`); their result files come back to this
process and are written into the sweep's folder here.

With ``exported`` (``resam sweep --skip-exported``) a cell that an export (``resam export``'s folder, e.g. a
committed reproduction) holds with exactly the cell's config counts as finished too
(:func:`finished_in_exports`): a fresh clone extends a committed sweep without rerunning what it already
has, and ``resam export --merge`` adds the new cells to that export.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..app.results import atomic_write_text
from .grid import ENGINES, Cell, Sweep, full_config, normalized_config
from .hooks import quiet_flower, shared_ray

__all__ = [
    "CellResult",
    "CellExecutor",
    "LocalProcesses",
    "run_sweep",
    "select_cells",
    "is_finished",
    "finished_in_exports",
    "write_manifest",
    "resolve_engine",
]


@dataclass
class CellResult:
    """What happened to one cell: ``status`` is ``done``, ``cached`` (finished earlier) or ``failed``."""

    cell: Cell
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    error: str = ""
    #: the Ray node that ran the cell (``--ray-address`` only), else ``""``.
    node: str = ""


def is_finished(cell: Cell) -> dict[str, Any] | None:
    """The cell's saved summary if it is finished with exactly this config, else ``None``.

    A run that failed after writing its summary (``status`` ``failed: ...``,
    :func:`~.results.finished_ok`) is not finished: the sweep runs it again.
    """
    from .results import finished_ok

    path = Path(cell.config["results-dir"]) / cell.name / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not finished_ok(summary):
        return None
    saved = summary.get("config")
    if not isinstance(saved, dict):
        return None
    try:
        same = normalized_config(saved) == normalized_config(cell.config)
    except ValueError:
        return None
    return summary if same else None


def finished_in_exports(cells: list[Cell], exports: list[str | Path]) -> dict[str, Any]:
    """The cells of ``cells`` that one of the exported sweeps ``exports`` holds: ``{cell name: Run}``.

    An export cell counts when its name is a cell's name and its config is the cell's config (the form
    :func:`is_finished` compares). Anything else that would silently rerun or skip cells raises
    :class:`ValueError`: a folder that is no export, an export that holds none of the cells (another
    sweep's), or a cell the export holds with another config (the sweep file changed since: rerunning it
    would give one name two experiments), named with the keys that differ.
    """
    from .compact import is_compact, load_compact
    from .results import differing_cells

    planned = {c.name: c for c in cells}
    found: dict[str, Any] = {}
    for export in dict.fromkeys(map(str, exports)):  # one export given twice is read once
        path = Path(export)
        if not is_compact(path):
            raise ValueError(f"--skip-exported {path}: not an export (no config.json and cells.csv there); "
                             "give a folder `resam export --out` wrote")
        runs = load_compact(path)
        mine = [run for run in runs if run.path.name in planned]
        if not mine:
            example = f" (e.g. {runs[0].path.name})" if runs else ""
            raise ValueError(f"--skip-exported {path}: none of its {len(runs)} cells{example} is a cell of "
                             "this sweep: another sweep's export?")
        changed = differing_cells((run.path.name, run.config, planned[run.path.name].config) for run in mine)
        if changed:
            name, keys = next(iter(changed.items()))
            raise ValueError(
                f"--skip-exported {path}: {len(changed)} of its cells have another config than this sweep "
                f"file plans (e.g. {name}: {', '.join(keys)}): the file changed since the export; export to "
                "another folder, or restore the file")
        found.update({run.path.name: run for run in mine})
    return found


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


def select_cells(
    sweep: Sweep,
    cells: list[Cell],
    *,
    only: list[str] | None = None,
    where: dict[str, str] | None = None,
) -> list[Cell]:
    """The cells of ``cells`` (``sweep``'s) whose name contains one of ``only``'s strings and whose full run
    config (defaults included, as the cell's ``summary.json`` records it) has ``where``'s values
    (``{"seed": "0"}``; ``alpha=1`` selects 1.0: :func:`.results.config_matches`).

    A typo must not run nothing and exit 0: a ``where`` key that is not a run-config key, an ``only`` string
    that no cell's name contains, or a selection that leaves no cell, raises ``ValueError`` naming it.
    """
    from .results import config_matches

    for text in only or []:
        if not any(text in c.name for c in cells):
            raise ValueError(f"--only {text}: no cell of sweep {sweep.name!r} ({len(cells)} cells) has "
                             f"{text!r} in its name (e.g. {cells[0].name})" if cells else
                             f"--only {text}: sweep {sweep.name!r} has no cells")

    if where:
        full = {c.name: full_config(c.config) for c in cells}
        for key in where:
            if not any(key in config for config in full.values()):
                varying = sorted({k for c in cells for k in c.varying})
                raise ValueError(
                    f"--where {key}=...: {key!r} is not a run-config key of sweep {sweep.name!r} "
                    f"(the keys its cells vary: {', '.join(varying) or 'none'})"
                )
    chosen = [
        c for c in cells
        if (not only or any(s in c.name for s in only))
        and (not where or config_matches(full[c.name], where))
    ]
    if (only or where) and not chosen:
        asked = " ".join(
            [*(f"--only {s}" for s in only or []), *(f"--where {k}={v}" for k, v in (where or {}).items())]
        )
        raise ValueError(f"no cell of sweep {sweep.name!r} ({len(cells)} cells) matches {asked}")
    return chosen


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
    where: dict[str, str] | None = None,
    verbose: bool = False,
    engine: str | None = None,
    jobs: int = 1,
    threads_per_cell: int = 1,
    ray_address: str | None = None,
    exported: list[str | Path] | None = None,
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
    where
        Run only the cells whose run config has these values (``{"seed": "0", "alpha": "1"}``, read by
        :func:`.results.config_matches`). With ``only`` or ``where``, a selection that matches no cell, or a
        ``where`` key that is no cell's config key, raises ``ValueError`` (see :func:`select_cells`).
    engine
        ``"ray"`` or ``"inprocess"`` for every cell (see the module docstring); default: each cell's own
        ``engine``, else the sweep's, else Ray.
    jobs
        Cells run at once, each in its own process (in-process engine only; 1: in this process).
    threads_per_cell
        With ``jobs > 1``: intra-op threads of each cell's process (``torch.set_num_threads``); with
        ``ray_address``: the CPUs each cell's Ray task asks for (``num_cpus``) and its intra-op threads.
    ray_address
        Run the cells as Ray tasks on the existing Ray cluster at this address (``"auto"``: the local one
        ``ray start`` made), each on the in-process engine; ``jobs`` is then unused (Ray schedules the
        tasks by their CPUs). See :mod:`.cluster`.
    exported
        Export folders (``resam export``'s) whose cells count as finished when they hold the cell with its
        config (:func:`finished_in_exports`; with ``resume`` only); they are reported as ``cached`` with the
        export's summary and timing.
    """
    from tqdm.auto import tqdm

    from ..simulation import backend_config

    if ray_address:
        if (engine or "inprocess") != "inprocess":
            raise ValueError(
                "on a Ray cluster (ray_address) each cell runs the in-process engine in a Ray task; "
                f"engine {engine!r} is not available there"
            )
        engine = "inprocess"
    if engine is not None:
        resolve_engine(sweep, engine)  # the flag is checked even when it overrides every cell
    default = resolve_engine(sweep)

    def engine_of(cell: Cell) -> str:
        return engine or cell.engine or default

    if jobs < 1 or threads_per_cell < 1:
        raise ValueError(f"jobs and threads_per_cell must be >= 1 (got {jobs}, {threads_per_cell})")
    cells = sweep.cells(results_root)
    if jobs > 1 and all(engine_of(c) == "ray" for c in cells):
        raise ValueError(
            "the Ray engine runs one cell at a time (Flower's Ray backend spreads each cell over the "
            "machine); use jobs = 1, or the in-process engine for several cells at once"
        )
    in_exports = finished_in_exports(cells, exported) if exported else {}
    cells = select_cells(sweep, cells, only=only, where=where)
    directory = sweep.directory(results_root)
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(sweep, sweep.cells(results_root), directory)
    backend = backend or backend_config()
    results: list[CellResult] = []
    todo = []
    from_exports = 0
    for cell in cells:
        done = is_finished(cell) if resume else None
        if done is not None:
            results.append(CellResult(cell, "cached", summary=done, timing=_read_timing(cell)))
        elif resume and cell.name in in_exports:
            run = in_exports[cell.name]
            results.append(CellResult(cell, "cached", summary=run.summary, timing=run.timing))
            from_exports += 1
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
        names = ", ".join(dict.fromkeys(map(str, exported or [])))
        exports = f", {from_exports} of them in {names}" if from_exports else ""
        say(
            f"[resam] {sweep.name}: {len(cells) - len(todo)} of {len(cells)} cells already finished{exports} "
            "(skipped)"
        )
    on_ray = [c for c in todo if engine_of(c) == "ray"]
    use_ray = share_ray and bool(on_ray)
    ray_ctx = (
        shared_ray(backend, reuse_actors=reuse_actors, worker_niceness=worker_niceness)
        if use_ray
        else contextlib.nullcontext(0.0)
    )
    log_ctx = contextlib.nullcontext() if verbose else quiet_flower()
    with ray_ctx as ray_init_s, log_ctx:
        if use_ray:
            say(f"[resam] Ray started once for {len(todo)} cell(s) in {ray_init_s:.1f}s")
        if ray_address and todo:
            from .cluster import RayTasks

            results += _run_parallel(todo, RayTasks(ray_address, threads_per_cell, verbose), bar, say)
        elif jobs > 1 and len(on_ray) < len(todo):
            local = [c for c in todo if engine_of(c) != "ray"]
            executor = LocalProcesses(jobs, threads_per_cell, verbose, len(local))
            results += _run_parallel(local, executor, bar, say)
            for cell in on_ray:  # cells that asked for Flower's Ray simulation: one at a time, afterwards
                results.append(_run_cell(cell, "ray", backend, bar, say, progress, verbose))
                bar.update(1)
        else:
            for cell in todo:
                results.append(_run_cell(cell, engine_of(cell), backend, bar, say, progress, verbose))
                bar.update(1)
    bar.close()
    order = {c.name: i for i, c in enumerate(cells)}
    return sorted(results, key=lambda r: order[r.cell.name])


def resolve_engine(sweep: Sweep, engine: str | None = None) -> str:
    """``engine`` if given, else the sweep file's ``[sweep] engine``, else ``"ray"``; checked."""
    chosen = engine or getattr(sweep, "engine", "") or "ray"
    if chosen not in ENGINES:
        raise ValueError(f"unknown engine {chosen!r}; expected one of {', '.join(ENGINES)}")
    return chosen


def _read_timing(cell: Cell) -> dict[str, float]:
    try:
        return json.loads((Path(cell.config["results-dir"]) / cell.name / "timing.json").read_text())
    except (OSError, ValueError):
        return {}


def _simulate_fn(engine: str, backend: dict | None):
    """``fn(config, verbose=..., on_round=...)`` running one cell on ``engine`` (looked up at call time:
    tests replace ``simulation.simulate``)."""
    if engine == "inprocess":
        from . import engine as engine_module

        return engine_module.simulate_in_process
    from .. import simulation

    def run_on_ray(config, *, verbose, on_round):
        return simulation.simulate(config, backend=backend, verbose=verbose, on_round=on_round)

    return run_on_ray


def _attempt(cell: Cell, simulate_fn, on_round, sink) -> tuple[CellResult, str]:
    """Run one cell with ``simulate_fn``, write ``timing.json`` (or ``error.txt``); the result and the line
    to print. The app's own output goes, line by line, to ``sink`` (``None``: ``<cell>/stdout.txt``)."""
    marks: list[float] = []

    def tick(server_round: int, row: dict[str, Any]) -> None:  # simulate()'s per-round callback
        marks.append(time.perf_counter())
        if on_round is not None:
            on_round(server_round, row)

    run_dir = Path(cell.config["results-dir"]) / cell.name
    lines: list[str] = []
    t_call = time.perf_counter()
    try:
        with contextlib.redirect_stdout(_LineWriter(sink or lines.append)):
            summary = simulate_fn(cell.config, verbose=sink is not None, on_round=tick)
    except Exception as exc:  # noqa: BLE001 - one failed cell does not stop the sweep
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "error.txt", traceback.format_exc())
        line = (
            f"[resam] {cell.name}: FAILED ({type(exc).__name__}: {exc}); traceback in {run_dir / 'error.txt'}"
        )
        return CellResult(cell, "failed", error=f"{type(exc).__name__}: {exc}"), line
    t_end = time.perf_counter()
    timing = _timing(t_call, t_end, marks, summary)
    atomic_write_text(run_dir / "timing.json", json.dumps(timing, indent=2))
    (run_dir / "error.txt").unlink(missing_ok=True)
    if lines:
        atomic_write_text(run_dir / "stdout.txt", "\n".join(lines) + "\n")
    acc = summary.get("final_test_accuracy")
    acc_text = "n/a" if acc is None else f"{100 * acc:.2f}%"
    line = (
        f"[resam] {cell.name}: test accuracy {acc_text}; {timing['total_s']:.1f}s "
        f"(start-up {timing.get('startup_s', float('nan')):.1f}s, "
        f"{timing.get('round_s', float('nan')):.2f}s/round)"
    )
    return CellResult(cell, "done", summary=summary, timing=timing), line


def _run_cell(cell: Cell, engine: str, backend: dict, bar, say, progress: bool, verbose: bool) -> CellResult:
    from tqdm.auto import tqdm

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

    def on_round(server_round: int, row: dict[str, Any]) -> None:
        inner.update(1)
        if "test-accuracy" in row:
            inner.set_postfix_str(f"acc {100 * row['test-accuracy']:.1f}%", refresh=False)

    try:
        result, line = _attempt(cell, _simulate_fn(engine, backend), on_round, say if verbose else None)
    finally:
        inner.close()
    say(line)
    if result.status == "done":
        acc = result.summary.get("final_test_accuracy")
        bar.set_postfix_str(f"last {'n/a' if acc is None else f'{100 * acc:.2f}%'}")
    return result


# -- several cells at once -------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """End this cell process when the sweep's driver ``parent`` dies (Linux ``PR_SET_PDEATHSIG``).

    Without it a driver killed by a signal leaves its cell processes running their cells to the end: they
    keep writing results and eat the CPUs of the rerun that resumes the sweep. Elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the driver died before prctl took effect
        os._exit(1)


#: In a cell process: the queue its cells report their rounds to (set by :func:`_init_cell_process`).
_PROGRESS: Any = None


def _init_cell_process(threads: int, parent: int | None = None, progress: Any = None) -> None:
    """Start of a cell process (``spawn``): ``threads`` intra-op threads, before anything imports torch;
    the process ends with the driver ``parent`` (:func:`_die_with_parent`); its cells report their rounds
    to the queue ``progress``."""
    global _PROGRESS
    _PROGRESS = progress
    if parent is not None:
        _die_with_parent(parent)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set (a reused interpreter): keep it
        torch.set_num_interop_threads(1)


def _reporter(cell: Cell, queue: Any):
    """``on_round`` that puts ``(cell name, round, test accuracy or None)`` on ``queue``; a full or broken
    queue never fails the cell (progress is best effort)."""
    if queue is None:
        return None

    def on_round(server_round: int, row: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            queue.put_nowait((cell.name, int(server_round), row.get("test-accuracy")))

    return on_round


def _cell_job(cell: Cell, verbose: bool, progress: Any = None) -> tuple[CellResult, str]:
    """One cell in a cell process, on the in-process engine (quiet Flower logs unless ``verbose``); its
    rounds go to ``progress`` (default: the cell process's queue)."""
    log_ctx = contextlib.nullcontext() if verbose else quiet_flower()
    with log_ctx:
        return _attempt(
            cell,
            _simulate_fn("inprocess", None),
            _reporter(cell, progress if progress is not None else _PROGRESS),
            (lambda s: print(s, file=sys.stderr)) if verbose else None,
        )


def _prepare_data(cells: list[Cell]) -> None:
    """Each distinct split into the on-disk cache, once, before the cell processes read it (no two
    processes write the same cache file)."""
    from ..app.config import ExperimentConfig
    from ..app.task import prepare_partitions

    for cell in cells:
        with contextlib.suppress(Exception):  # a cell that cannot load its data fails in its own process
            prepare_partitions(ExperimentConfig.from_run_config(cell.config))


class CellExecutor:
    """Where the cells of a parallel sweep run; :func:`_run_parallel` is the one loop over them.

    ``submit(cell)`` starts a cell and returns a :class:`concurrent.futures.Future`; ``finish(cell, value)``
    turns the future's value into ``(CellResult, line to print)`` on the driver (writing what the cell
    produced elsewhere, if anything). An exception from the future means the cell's worker died; the loop
    records it as the cell's failure. Implementations: :class:`LocalProcesses` (``--jobs``) and
    :class:`.cluster.RayTasks` (``--ray-address``). ``progress``: a queue (``get_nowait``) of the running
    cells' ``(cell name, round, test accuracy)`` reports, or ``None``.
    """

    label = ""
    progress: Any = None

    def __enter__(self) -> CellExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, cell: Cell) -> concurrent.futures.Future:
        raise NotImplementedError

    def finish(self, cell: Cell, value: Any) -> tuple[CellResult, str]:
        return value


class LocalProcesses(CellExecutor):
    """``jobs`` cell processes on this machine (``spawn``), each with ``threads`` intra-op threads."""

    def __init__(self, jobs: int, threads: int, verbose: bool, n_cells: int) -> None:
        self.jobs, self.threads, self.verbose = min(jobs, n_cells), threads, verbose
        self.label = f"{self.jobs} jobs x {threads} thread(s)"
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalProcesses:
        context = multiprocessing.get_context("spawn")
        self.progress = context.Queue()
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=context,
            initializer=_init_cell_process,
            initargs=(self.threads, os.getpid(), self.progress),
        )
        return self

    def __exit__(self, *exc) -> None:
        assert self._pool is not None
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.progress is not None:  # reports nobody will read must not block this process's exit
            self.progress.cancel_join_thread()
            self.progress.close()
            self.progress = None

    def submit(self, cell: Cell) -> concurrent.futures.Future:
        assert self._pool is not None
        return self._pool.submit(_cell_job, cell, self.verbose)


class CellBars:
    """One tqdm bar of rounds per running cell of a parallel sweep, under the sweep's bar (positions 1..K).

    ``report(name, round, accuracy)`` moves a cell's bar (made on its first report), ``close(name)`` removes
    it when the cell ends; ``last`` keeps every cell's last reported round. Bars draw only when ``enabled``
    and stderr is a terminal; the reports are recorded either way.
    """

    def __init__(self, cells: list[Cell], enabled: bool) -> None:
        self.enabled = enabled
        self.rounds = {c.name: int(c.config.get("num-server-rounds", 0) or 0) for c in cells}
        self.bars: dict[str, Any] = {}
        self.positions: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.ended: set[str] = set()

    def report(self, name: str, server_round: int, accuracy: float | None = None) -> None:
        from tqdm.auto import tqdm

        self.last[name] = max(server_round, self.last.get(name, 0))
        if name in self.ended:  # a late report of a cell that has finished: no new bar
            return
        bar = self.bars.get(name)
        if bar is None:
            used = set(self.positions.values())
            position = next(p for p in range(1, len(used) + 2) if p not in used)
            bar = tqdm(total=self.rounds.get(name) or None, desc=name[:40], unit="round", leave=False,
                       disable=None if self.enabled else True, position=position, dynamic_ncols=True)
            self.bars[name], self.positions[name] = bar, position
        bar.n = self.last[name]
        if accuracy not in (None, ""):
            bar.set_postfix_str(f"acc {100 * float(accuracy):.1f}%", refresh=False)
        bar.refresh()

    def drain(self, queue: Any) -> None:
        """Apply every report waiting in ``queue`` (``None``: nothing to do)."""
        while queue is not None:
            try:
                name, server_round, accuracy = queue.get_nowait()
            except Exception:  # noqa: BLE001 - empty (queue.Empty, ray's Empty) or closed: done for now
                return
            self.report(name, server_round, accuracy)

    def close(self, name: str) -> None:
        self.ended.add(name)
        self.positions.pop(name, None)
        bar = self.bars.pop(name, None)
        if bar is not None:
            bar.close()

    def close_all(self) -> None:
        for name in list(self.bars):
            self.close(name)


def _run_parallel(todo: list[Cell], executor: CellExecutor, bar, say, bars: CellBars | None = None
                  ) -> list[CellResult]:
    _prepare_data(todo)
    bars = bars if bars is not None else CellBars(todo, enabled=not bar.disable)
    results: list[CellResult] = []
    with executor:
        futures = {executor.submit(cell): cell for cell in todo}
        bar.set_postfix_str(executor.label)
        pending = set(futures)
        try:
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
                )
                bars.drain(executor.progress)
                for future in done:
                    cell = futures[future]
                    bars.drain(executor.progress)  # its last rounds, before its bar goes
                    bars.close(cell.name)
                    try:
                        result, line = executor.finish(cell, future.result())
                    except Exception as exc:  # noqa: BLE001 - the cell's worker died (killed, out of memory)
                        run_dir = Path(cell.config["results-dir"]) / cell.name
                        run_dir.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(run_dir / "error.txt", f"the cell's process failed: {exc!r}\n")
                        result = CellResult(cell, "failed", error=f"{type(exc).__name__}: {exc}")
                        line = f"[resam] {cell.name}: FAILED ({type(exc).__name__}: {exc})"
                    say(line)
                    results.append(result)
                    bar.update(1)
        finally:
            bars.close_all()
    return results
