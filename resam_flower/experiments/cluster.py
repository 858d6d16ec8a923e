"""Sweep cells as Ray tasks on an existing Ray cluster (``resam sweep FILE --ray-address ADDR``).

:class:`RayTasks` is the :class:`~.runner.CellExecutor` of a sweep on a cluster: the driver (the process
running ``resam sweep``) connects to the cluster (``ray.init(address=ADDR)``; ``"auto"``: the cluster that
``ray start`` made on this machine) and submits one task per unfinished cell, asking for ``num_cpus`` =
threads per cell. A task (:func:`run_cell_task`) runs the cell on the in-process engine
(:func:`.engine.simulate_in_process`, through the runner's own :func:`~.runner._cell_job`) in a temporary
folder of whichever node runs it, and returns the contents of the cell's result files (``summary.json``,
``metrics.csv``, ``config.json``, ``timing.json``, ``stdout.txt``, ``error.txt``) with the node's id. The
driver writes them into the sweep's results folder on the driver (:meth:`RayTasks.finish`),
``summary.json`` last, and records the node in ``<cell>/node.json``; ``config``'s ``results-dir`` is the
driver's folder again.

Everything else is the runner's: finished cells are skipped before any task is submitted (killing the
driver and rerunning resumes), a cell that raises is recorded in ``error.txt`` and run again next time, a
task whose worker dies fails its cell only, and one progress bar counts the cells. Each task reports its
rounds to a Ray queue (``ray.util.queue.Queue``, an actor that asks for no CPU) that the driver drains into
one bar per running cell (:class:`~.runner.CellBars`).

The nodes need this package and its dependencies installed (the same versions: the final model of a cell
does not depend on the node that ran it, only on its config), and a node reads or downloads a cell's data
set itself. Checkpoints (``checkpoint-every``) stay in the task's temporary folder and are dropped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import socket
import tempfile
from pathlib import Path
from typing import Any

from ..app.results import atomic_write_text
from .grid import Cell
from .runner import CellExecutor, CellResult, _cell_job

__all__ = ["RayTasks", "run_cell_task", "RESULT_FILES"]

#: the text files of a cell that a task sends back, in the order the driver writes them (summary last:
#: it marks the cell finished).
RESULT_FILES = ("config.json", "metrics.csv", "timing.json", "stdout.txt", "error.txt", "summary.json")


def run_cell_task(cell: Cell, threads: int, verbose: bool, progress: Any = None) -> dict[str, Any]:
    """One cell, in a Ray task: run it in a temporary folder of this node; return its files and the node.
    Its rounds are reported to ``progress`` (a ``ray.util.queue.Queue``) when given."""
    import ray
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="resam-cell-") as tmp:
        local = Cell(cell.name, {**cell.config, "results-dir": tmp}, dict(cell.varying))
        result, line = _cell_job(local, verbose, progress)
        run_dir = Path(tmp) / cell.name
        files = {name: (run_dir / name).read_text() for name in RESULT_FILES if (run_dir / name).is_file()}
    return {
        "status": result.status,
        "error": result.error,
        "timing": result.timing,
        "line": line.replace(str(run_dir), "{run_dir}"),
        "files": files,
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
    }


def _driver_paths(text: str, name: str, results_dir: str) -> str:
    """``config.json`` / ``summary.json`` with the driver's ``results-dir`` instead of the task's."""
    data = json.loads(text)
    config = data if name == "config.json" else data.get("config")
    if isinstance(config, dict) and "results-dir" in config:
        config["results-dir"] = results_dir
    return json.dumps(data, indent=2, sort_keys=True, default=str)


class RayTasks(CellExecutor):
    """Cells as Ray tasks on the cluster at ``address``, ``threads`` CPUs each (see the module docstring)."""

    def __init__(self, address: str, threads: int, verbose: bool) -> None:
        self.address, self.threads, self.verbose = address, threads, verbose
        self.label = f"Ray cluster {address}, {threads} CPU(s) a cell"
        self._task = None

    def __enter__(self) -> RayTasks:
        import warnings

        import ray

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator env vars
            ray.init(
                address=self.address,
                log_to_driver=self.verbose,
                logging_level=logging.INFO if self.verbose else logging.WARNING,
                configure_logging=self.verbose,
            )
        self._task = ray.remote(run_cell_task).options(num_cpus=self.threads, max_retries=0)
        from ray.util.queue import Queue

        self.progress = Queue(actor_options={"num_cpus": 0})  # the cells' round reports, to the driver
        return self

    def __exit__(self, *exc) -> None:
        import ray

        if self.progress is not None:
            with contextlib.suppress(Exception):
                self.progress.shutdown()
            self.progress = None
        ray.shutdown()  # the driver's connection only: the cluster stays up

    def submit(self, cell: Cell) -> concurrent.futures.Future:
        assert self._task is not None
        return self._task.remote(cell, self.threads, self.verbose, self.progress).future()

    def finish(self, cell: Cell, value: dict[str, Any]) -> tuple[CellResult, str]:
        from ..app.config import ExperimentConfig

        run_dir = Path(cell.config["results-dir"]) / cell.name
        run_dir.mkdir(parents=True, exist_ok=True)
        results_dir = str(ExperimentConfig.from_run_config(cell.config).to_dict()["results-dir"])
        files = value["files"]
        if value["status"] == "done":
            (run_dir / "error.txt").unlink(missing_ok=True)
        node = {"node_id": value["node_id"], "hostname": value["hostname"]}
        atomic_write_text(run_dir / "node.json", json.dumps(node, indent=2))
        for name in RESULT_FILES:
            if name in files:
                text = files[name]
                if name in ("config.json", "summary.json"):
                    text = _driver_paths(text, name, results_dir)
                atomic_write_text(run_dir / name, text)
        summary = json.loads((run_dir / "summary.json").read_text()) if value["status"] == "done" else {}
        line = value["line"].replace("{run_dir}", str(run_dir))
        result = CellResult(
            cell,
            value["status"],
            summary=summary,
            timing=value["timing"],
            error=value["error"],
            node=value["node_id"],
        )
        return result, line
