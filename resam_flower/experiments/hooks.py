"""Process-local hooks around the simulation engine: one shared Ray, quiet Flower logs, hard Ctrl-C.

All three are context managers that restore what they change on exit; nothing here edits Flower or the app.
(Per-round progress needs no hook: :func:`resam_flower.simulation.simulate` takes an ``on_round`` callback.)

* :func:`shared_ray` starts Ray once for many simulations. Flower's Ray backend only calls ``ray.init`` when
  Ray is not running, but calls ``ray.shutdown()`` at the end of every simulation; inside this context that
  shutdown is deferred to the context's exit (the same effect as the legacy ``start_simulation``'s
  ``keep_initialised=True``). Idle client actors are kept too and serve the next simulation.
* :func:`quiet_flower` drops Flower's log records below ERROR (the per-run deprecation notice, the
  per-round INFO lines) while a sweep draws its progress bars.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["shared_ray", "quiet_flower", "exit_on_interrupt"]


@contextlib.contextmanager
def shared_ray(
    backend: dict[str, Any] | None = None, *, reuse_actors: bool = True, worker_niceness: int | None = None
) -> Iterator[float]:
    """Keep one Ray instance up for all simulations run inside; yields the seconds ``ray.init`` took.

    ``backend`` is the backend config passed to ``simulate`` (its ``init_args`` go to ``ray.init``).
    Ray is started here exactly as Flower's backend would start it (same arguments, the driver's
    ``sys.path`` exported as ``PYTHONPATH`` so actors import the same code), and shut down on exit.
    ``reuse_actors``: idle client actors also outlive a simulation and serve the next one (no process
    start, imports and data loading per cell); node state still starts fresh, as it lives in each run's
    ``Context``.
    ``worker_niceness``: the nice value of Ray's worker processes (the client actors). Ray's default is 15,
    which on a busy machine starves the actors behind every other process; Ray's own job manager runs
    job drivers at 0. ``None`` keeps Ray's default (or an inherited ``RAY_worker_niceness``).
    """
    import time

    import ray

    from ..compat import ray_backend_kept_alive

    started = False
    t0 = time.perf_counter()
    saved_niceness = os.environ.get("RAY_worker_niceness")
    if not ray.is_initialized():
        if worker_niceness is not None:
            os.environ["RAY_worker_niceness"] = str(int(worker_niceness))
        args = dict((backend or {}).get("init_args", {}))
        args.setdefault("include_dashboard", False)
        pythonpath = os.pathsep.join(sys.path)
        if os.environ.get("PYTHONPATH"):
            pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
        os.environ["PYTHONPATH"] = pythonpath
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator env vars
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **args)
        started = True
    init_s = time.perf_counter() - t0
    try:
        with ray_backend_kept_alive(reuse_actors):
            yield init_s
    finally:
        if started:
            ray.shutdown()
        if saved_niceness is None:
            os.environ.pop("RAY_worker_niceness", None)
        else:
            os.environ["RAY_worker_niceness"] = saved_niceness


class _DropBelow(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


@contextlib.contextmanager
def quiet_flower(level: int = logging.ERROR) -> Iterator[None]:
    """Drop Flower's log records below ``level`` (excluded replies are still counted in the results)."""
    logger = logging.getLogger("flwr")
    flt = _DropBelow(level)
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


@contextlib.contextmanager
def exit_on_interrupt(message: str = "interrupted") -> Iterator[None]:
    """Make Ctrl-C (SIGINT) end the process at once, with exit status 130.

    Flower's simulation does not stop on a ``KeyboardInterrupt``: its clean-up waits for the ServerApp
    thread, which waits for replies that no longer come. A sweep loses nothing by stopping hard (each cell's
    files are written atomically at its end; an unfinished cell is simply rerun on resume), so the handler
    prints ``message``, shuts Ray down and exits. Outside the main thread this is a no-op.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        print(f"\n[resam] {message}", file=sys.stderr, flush=True)
        try:
            import ray

            ray.shutdown()
        finally:
            os._exit(130)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
