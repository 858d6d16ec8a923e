"""What every RESAM strategy shares: waiting for nodes, the run loop's defaults, and the wrapper base.

:func:`run_rounds` is Flower's :meth:`~flwr.serverapp.strategy.Strategy.start` with three changes a robust run
needs: a round deadline (``round_timeout``, not Flower's hour), ``Result.arrays`` that always holds the
current model (Flower leaves it empty when no round aggregated), and a run in which every round was skipped
ends with :class:`NoProgressError` instead of looking like success. :class:`StrategyWrapper` is the base of
the wrappers (simulated adversary, checkpoints) that add a behaviour around any such strategy, as Flower's
differential-privacy wrappers do.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

__all__ = ["NoProgressError", "AttackNotRunError", "StrategyWrapper", "run_rounds", "core_of"]


class NoProgressError(RuntimeError):
    """Every round of a run was skipped: the model never changed. ``result`` holds what Flower returned."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


class AttackNotRunError(RuntimeError):
    """A simulated attack that the Byzantine nodes must run themselves (label flipping) did not run: the
    run would be recorded as attacked while every node trained honestly."""


def core_of(strategy: Strategy) -> Strategy:
    """The innermost strategy of a chain of :class:`StrategyWrapper`."""
    while isinstance(strategy, StrategyWrapper):
        strategy = strategy.strategy
    return strategy


def run_rounds(
    strategy: Strategy,
    core: Any,
    grid: Grid,
    initial_arrays: ArrayRecord,
    num_rounds: int = 3,
    timeout: float | None = None,
    train_config: Any = None,
    evaluate_config: Any = None,
    evaluate_fn: Any = None,
) -> Result:
    """Run ``strategy`` (a RESAM core ``core`` or a wrapper around it) with Flower's round loop.

    ``timeout`` defaults to ``core.round_timeout``, ``evaluate_fn`` to ``core.evaluate_fn``; after a resume
    (``core.round_offset`` = K) ``evaluate_fn`` receives global round numbers.
    """
    fn = core.evaluate_fn if evaluate_fn is None else evaluate_fn
    offset = core.round_offset
    if fn is not None and offset:
        inner_fn = fn

        def fn(rnd: int, arrays: ArrayRecord):  # noqa: F811 - the same callback, global round numbers
            return inner_fn(rnd + offset, arrays)

    log_before = len(core.round_log)
    result = Strategy.start(
        strategy,
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=num_rounds,
        timeout=core.round_timeout if timeout is None else timeout,
        train_config=train_config,
        evaluate_config=evaluate_config,
        evaluate_fn=fn,
    )
    result.arrays = core.current_arrays if core.current_arrays is not None else initial_arrays
    rounds = core.round_log[log_before:]
    if num_rounds > 0 and rounds and all("skipped" in e for e in rounds) and core.fail_if_no_progress:
        reasons = sorted({str(e["skipped"]) for e in rounds})
        raise NoProgressError(
            f"all {len(rounds)} rounds were skipped, the model never changed: {'; '.join(reasons[:3])}",
            result,
        )
    return result


class StrategyWrapper(Strategy):
    """Base of the wrappers: every hook and attribute goes to the wrapped ``strategy`` unless overridden."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def __getattr__(self, name: str) -> Any:
        if name == "strategy":  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def round_offset(self) -> int:
        return core_of(self).round_offset

    @round_offset.setter
    def round_offset(self, value: int) -> None:
        core_of(self).round_offset = value

    def summary(self) -> None:
        self.strategy.summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Result:
        return run_rounds(self, core_of(self), grid, initial_arrays, *args, **kwargs)

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001 - Strategy's signature
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # noqa: ANN001
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):  # noqa: ANN001
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):  # noqa: ANN001
        return self.strategy.aggregate_evaluate(server_round, replies)

    def state_dict(self) -> dict[str, Any]:
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.strategy.load_state_dict(state)
