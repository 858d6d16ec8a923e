"""Run one experiment in Flower's simulation engine (Ray backend) from Python.

``flwr run .`` is the command-line way (it reads ``[tool.flwr.app.config]`` and ``--run-config``); this is the
programmatic way used by the sweep runner, the benchmarks and the tests::

    from resam_flower.simulation import simulate
    summary = simulate({"dataset": "digits", "model": "mlp", "num-clients": 8, "num-byzantine": 1})

The ServerApp and ClientApp are the default app's; the experiment travels to the workers inside the train
messages (``exp-`` keys), so nothing else needs configuring.

Progress: ``simulate(config, on_round=fn)`` calls ``fn(server_round, row)`` at the end of every round, in
the ServerApp's thread of this process, with the round's ``metrics.csv`` row (see
:mod:`resam_flower.app.server_app`)::

    simulate(config, on_round=lambda rnd, row: print(rnd, row.get("test-accuracy")))

An exception raised by ``fn`` stops the simulation and is raised by ``simulate`` as a
:class:`~resam_flower.app.server_app.RoundCallbackError` naming the callback (its cause chained).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .app.config import ExperimentConfig
from .app.server_app import RoundCallback, RoundCallbackError, run_experiment
from .app.task import prepare_partitions
from .app.worker import make_client_app
from .compat import poll_faster, run_simulation, stable_simulation_node_ids

__all__ = ["simulate", "backend_config", "poll_faster", "RoundCallbackError"]


def backend_config(
    num_cpus: int | None = None,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    *,
    address: str | None = None,
) -> dict:
    """Ray backend settings: the machine's cores, one per virtual client by default.

    ``address`` (``"auto"``, or the head's ``host:port``) joins an existing Ray cluster instead of starting
    Ray on this machine: the simulation's client actors are then placed on the cluster's nodes by their
    ``client_resources`` (the cluster's own CPUs count, so ``num_cpus`` must not be given).
    """
    init_args: dict = {"logging_level": "ERROR", "log_to_driver": False}
    if address is not None:
        if num_cpus is not None:
            raise ValueError("num_cpus cannot be given with address: a Ray cluster brings its own CPUs")
        init_args["address"] = address
    else:
        init_args["num_cpus"] = num_cpus or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": gpus_per_client},
        "init_args": init_args,
    }


def simulate(
    run_config: dict[str, Any] | ExperimentConfig,
    *,
    backend: dict | None = None,
    verbose: bool = False,
    on_round: RoundCallback | None = None,
) -> dict:
    """Run the experiment described by ``run_config`` on the Ray backend; return its summary.

    Parameters
    ----------
    run_config : dict or ExperimentConfig
        The experiment (kebab-case run-config keys, as ``flwr run --run-config`` takes them).
    backend : dict, optional
        Ray backend config (default: :func:`backend_config`).
    verbose : bool (default: False)
        Flower's INFO logs (per-round lines) and DEBUG logs of the engine.
    on_round : callable, optional
        ``on_round(server_round, row)`` after every round (global round number, the round's
        ``metrics.csv`` row). If it raises, the run stops and :class:`RoundCallbackError` is raised here.
    """
    cfg = (
        run_config
        if isinstance(run_config, ExperimentConfig)
        else ExperimentConfig.from_run_config(run_config)
    )
    out: dict[str, Any] = {}
    callback_errors: list[RoundCallbackError] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        poll_faster(grid)
        try:
            out.update(run_experiment(grid, cfg, on_round=on_round))
        except RoundCallbackError as exc:  # raised below, in the caller's thread, once the engine is down
            callback_errors.append(exc)

    # The split, computed here once into the on-disk cache: the client processes then read it and never
    # import datasets/flwr_datasets (seconds of every actor's start-up, on the first round's clock).
    prepare_partitions(cfg)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    with stable_simulation_node_ids(cfg.seed):
        run_simulation(
            server_app=server,
            client_app=make_client_app(),
            num_supernodes=cfg.num_clients,
            backend_config=backend or backend_config(),
            verbose_logging=verbose,
        )
    if callback_errors:
        raise callback_errors[0]
    if not out:
        raise RuntimeError(
            "the simulation ended without a result (see the log above for the ServerApp's error)"
        )
    return out
