"""The default ServerApp (``[tool.flwr.app.components] serverapp``): RESAM with a simulated adversary.

It reads :class:`~resam_flower.app.config.ExperimentConfig` from the run config, runs
:class:`~resam_flower.strategies.ResilientAveraging` for ``num-server-rounds`` rounds with centralised test
evaluation every ``eval-every`` rounds, and writes ``<results-dir>/<run-name>/`` (``config.json``,
``metrics.csv``, ``summary.json``), then prints a one-line summary.

Checkpoints (run config ``checkpoint-every = K > 0``): ``<results-dir>/<run-name>/checkpoint.pt`` is written
atomically after every ``K``-th round and the last one, and the workers keep a crash-safe copy of their
momentum under ``<results-dir>/<run-name>/momentum/`` (see :mod:`resam_flower.strategies.checkpoint` and
:mod:`resam_flower.clients.momentum_store`). ``resume = true`` continues from that checkpoint if it exists
(the run config must be the same, except ``num-server-rounds``, ``checkpoint-every``, ``eval-every``,
``results-dir`` and ``device``).

Per-round callback (Python API, :func:`run_experiment` and :func:`resam_flower.simulation.simulate`):
``on_round(server_round, row)`` is called once at the end of every server round, after the centralised
evaluation, with the global round number (continuing from the checkpoint's after a resume) and that
round's ``metrics.csv`` row (a copy: the strategy's ``round_log`` entry merged with the round's ``test-*``
metrics when it was evaluated). An exception raised by the callback stops the run at once with a
:class:`RoundCallbackError` naming the callback; no results are written for that run (checkpoints already
written stay, so ``resume = true`` can continue it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from .._provenance import code_version
from ..aggregators import build as build_rule
from ..strategies import (
    AttackNotRunError,
    Checkpointing,
    NoProgressError,
    ResilientAveraging,
    SimulatedAdversary,
    core_of,
)
from ..strategies.checkpoint import Checkpointer, model_digest
from .config import ExperimentConfig, parse_params
from .results import write_run
from .task import evaluate, model_for, test_split

__all__ = ["app", "run_experiment", "build_strategy", "metrics_row", "RoundCallback", "RoundCallbackError"]

app = ServerApp()

#: ``on_round(server_round, row)``: see the module docstring.
RoundCallback = Callable[[int, dict[str, Any]], None]


class RoundCallbackError(RuntimeError):
    """The ``on_round`` callback raised: the run was stopped after that round (the cause is chained)."""


def metrics_row(entry: dict[str, Any], evals: dict[int, dict[str, float]]) -> dict[str, Any]:
    """One ``metrics.csv`` row: a ``round_log`` entry merged with that round's centralised test metrics.

    ``skipped`` is ``""`` when the round was not skipped; ``test-<metric>`` keys are present only for the
    rounds that were evaluated (every ``eval-every`` rounds and the last).
    """
    row = {k: v for k, v in entry.items() if k != "skipped"}
    row["skipped"] = entry.get("skipped", "")
    for k, v in evals.get(entry["round"], {}).items():
        row[f"test-{k}"] = v
    return row


def _notify(on_round: RoundCallback, server_round: int, row: dict[str, Any]) -> None:
    try:
        on_round(server_round, row)
    except Exception as exc:  # a callback error is a bug of the caller: stop, and say whose
        name = getattr(on_round, "__qualname__", None) or repr(on_round)
        module = getattr(on_round, "__module__", None)
        where = f"{module}.{name}" if module else name
        raise RoundCallbackError(
            f"the on_round callback {where} raised {type(exc).__name__}: {exc} at round {server_round}; "
            "the run was stopped"
        ) from exc


def build_strategy(cfg: ExperimentConfig, evaluate_fn=None, checkpointer=None) -> Strategy:
    """The strategy described by ``cfg``: :class:`ResilientAveraging`, wrapped by the simulated adversary
    (when ``cfg`` has an attack) and by :class:`Checkpointing` (when ``checkpointer`` is given)."""
    strategy: Strategy = ResilientAveraging(
        aggregator=cfg.aggregator,
        num_byzantine=cfg.num_byzantine,
        aggregator_params=parse_params(cfg.aggregator_params),
        mode=cfg.mode,
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        lr_schedule_params=cfg.lr_schedule_params(),
        weight_decay=cfg.server_weight_decay,
        max_update_norm=cfg.max_update_norm or None,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.num_clients,
        evaluate_fn=evaluate_fn,
        seed=cfg.seed,
        round_timeout=cfg.round_timeout,
        node_stall_timeout=cfg.node_stall_timeout,
    )
    if cfg.attacked:
        params = parse_params(cfg.attack_params)
        if cfg.attack.startswith("optimal") and "aggregator" not in params:
            # The optimal attacks search against the rule in use (a separate instance: no shared state).
            params["aggregator"] = build_rule(
                cfg.aggregator, f=cfg.num_byzantine, **parse_params(cfg.aggregator_params)
            )
        strategy = SimulatedAdversary(
            strategy,
            cfg.attack,
            cfg.num_byzantine,
            seed=cfg.seed,
            honest_data=cfg.data_split == "honest",
            **params,
        )
    if checkpointer is not None:
        strategy = Checkpointing(strategy, checkpointer)
    return strategy


def run_experiment(
    grid: Grid, cfg: ExperimentConfig, *, on_round: RoundCallback | None = None
) -> dict[str, Any]:
    """Run one experiment on ``grid``; write its results; return the summary.

    ``on_round(server_round, row)``, if given, is called after every round (see the module docstring);
    an exception it raises stops the run with :class:`RoundCallbackError`.
    """
    torch.manual_seed(cfg.seed)
    test = test_split(cfg)
    model = model_for(cfg, test.num_classes, test.in_shape, fresh=True)
    initial = ArrayRecord(model.state_dict())
    last = cfg.num_server_rounds
    run_dir = Path(cfg.results_dir) / cfg.name()
    evals: dict[int, dict[str, float]] = {}  # global round -> centralised test metrics

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Flower's Strategy.start calls this before round 1 and at the end of every round (the last step of
        # a round), with the global round number (ResilientAveraging adds its round_offset).
        result = None
        if server_round % cfg.eval_every == 0 or server_round == last:
            model.load_state_dict(arrays.to_torch_state_dict())
            evals[server_round] = evaluate(model, test)
            result = MetricRecord(evals[server_round])
        if on_round is not None and server_round > core.round_offset:
            entry = next(
                (e for e in reversed(core.round_log) if e.get("round") == server_round),
                {"round": server_round},  # a round whose aggregate_train logged nothing
            )
            _notify(on_round, server_round, metrics_row(entry, evals))
        return result

    checkpointer = None
    if cfg.checkpoint_every or cfg.resume:
        checkpointer = Checkpointer(
            run_dir / "checkpoint.pt",
            cfg.checkpoint_every,
            last_round=last,
            momentum_dir=run_dir / "momentum",
            config=cfg.to_dict(),
            extra={"evals": evals},
        )
    strategy = build_strategy(cfg, evaluate_fn, checkpointer)
    core = core_of(strategy)
    if checkpointer is not None and cfg.resume and not checkpointer.path.exists():
        log(WARNING, "[resam] resume=true but there is no checkpoint at %s (results-dir and run-name "
            "locate it; a relative results-dir is read from the working directory %s): starting at round 1",
            checkpointer.path, Path.cwd())
    elif checkpointer is not None and cfg.resume:
        ckpt = Checkpointer.load(checkpointer.path)
        if ckpt.round > last:
            raise ValueError(
                f"num-server-rounds = {last} is below the round of the checkpoint it would resume, "
                f"{ckpt.round} ({checkpointer.path}): give num-server-rounds >= {ckpt.round}"
            )
        initial = checkpointer.resume(strategy, ckpt)
        evals.update({int(r): dict(m) for r, m in ckpt.extra.get("evals", {}).items()})
        log(INFO, "[resam] resuming %s after round %d of %d%s", cfg.name(), ckpt.round, last,
            "" if ckpt.round < last else ": the checkpoint is the last round, nothing is left to run")
    start_round = core.round_offset
    t0 = time.perf_counter()
    failure: NoProgressError | AttackNotRunError | None = None
    try:
        strategy.start(  # its Result is in core.round_log, evals and core.current_arrays
            grid=grid,
            initial_arrays=initial,
            num_rounds=max(last - start_round, 0),
            train_config=ConfigRecord(cfg.to_config_record()),
            evaluate_config=ConfigRecord(cfg.to_config_record()),
        )
    except (NoProgressError, AttackNotRunError) as exc:  # the results are written (saying why), then it fails
        failure = exc
    wall = time.perf_counter() - t0
    rows = [metrics_row(entry, evals) for entry in core.round_log]
    final_round = max(evals) if evals else 0
    summary = {
        "run_name": cfg.name(),
        "final_test_accuracy": evals.get(final_round, {}).get("accuracy"),
        "final_test_loss": evals.get(final_round, {}).get("loss"),
        "initial_test_accuracy": evals.get(0, {}).get("accuracy"),
        "best_test_accuracy": max((m.get("accuracy", 0.0) for m in evals.values()), default=None),
        "rounds": len(core.round_log),
        "wall_time_s": wall,
        "resumed_from_round": start_round,
        "final_model_sha256": model_digest(core.current_arrays or initial),
        "excluded_replies": int(sum(core.excluded_total.values())),
        "excluded_by_reason": dict(core.excluded_total),
        "skipped_rounds": sum(1 for e in core.round_log if "skipped" in e),
        "byzantine_nodes": getattr(strategy, "chosen", None) or [],
        "aggregator": core.rule.spec,
        "status": "ok" if failure is None else f"failed: {failure}",
        "code": code_version(),
        "config": cfg.to_dict(),
    }
    write_run(run_dir, cfg.to_dict(), rows, summary)
    acc = summary["final_test_accuracy"]
    print(
        f"[resam] {cfg.name()}: final test accuracy {acc if acc is None else f'{100 * acc:.2f}%'} after "
        f"{summary['rounds']} rounds in {wall:.1f}s; excluded replies {summary['excluded_replies']}; "
        f"results in {run_dir}",
        flush=True,
    )
    if failure is not None:
        raise failure
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run .``."""
    run_experiment(grid, ExperimentConfig.from_run_config(context.run_config))
