"""RESAM's server: resilient averaging of the workers' momentums, as a Flower strategy."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from logging import ERROR, INFO, WARNING
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from ..aggregators import Aggregator, build
from ..aggregators.base import check_float, check_int
from ..flat import FlatSpec
from .robust_metrics import median_metrics
from .schedules import LRSchedule, build_schedule
from .validation import screen_replies

__all__ = ["ResilientAveraging", "AdversaryHook"]

MODES = ("gradient", "model")


class CheckpointHook(Protocol):
    """What a checkpointer offers the strategy (:class:`resam_flower.strategies.checkpoint.Checkpointer`)."""

    def train_config(self) -> dict[str, Any]:
        """Entries added to every train config (where workers keep their momentum, the run's lineage)."""

    def end_of_round(self, strategy: ResilientAveraging, server_round: int, arrays: ArrayRecord) -> None:
        """Called once per round after every strategy hook of the round ran (writes every K rounds)."""


class AdversaryHook(Protocol):
    """What a simulated adversary offers the strategy (see :mod:`resam_flower.strategies.adversary`).

    The strategy calls it around the rule, never inside it: the rule does not learn who is Byzantine.
    """

    def node_config(self, server_round: int, sampled: list[int], all_nodes: list[int]) -> dict[int, dict]:
        """Extra config entries for some sampled nodes (e.g. tell Byzantine nodes to flip labels)."""

    def corrupt(
        self, server_round: int, replies: list[Message], spec: FlatSpec, reference: torch.Tensor | None
    ) -> tuple[list[Message], dict[str, float]]:
        """Replace the Byzantine nodes' replies; return the replies and metrics about the attack."""


class ResilientAveraging(FedAvg):
    r"""Resilient averaging of momentums (RESAM), Farhadkhani et al., ICML 2022.

    Each round the sampled workers reply with their local momentum
    :math:`m_t^i = \beta m_{t-1}^i + (1-\beta) g_t^i` (see :func:`resam_flower.clients.momentum_mod`).
    The server screens the replies, aggregates the valid ones with a resilient averaging rule
    :math:`R_t = F(m_t^1, \dots, m_t^n)` and updates
    :math:`\theta_{t+1} = \theta_t - \gamma_t (R_t + \lambda \theta_t)`.

    Parameters
    ----------
    aggregator : str or Aggregator (default: ``"nnm+cwtm"``)
        Rule spec for :func:`resam_flower.aggregators.build` (``"cwtm"``, ``"nnm+krum"``, ...) or a built
        rule.
    num_byzantine : int (default: 0)
        ``f``: how many Byzantine replies the rule must tolerate.
    aggregator_params : dict, optional
        Extra parameters for the rule (routed as in :func:`~resam_flower.aggregators.build`).
    mode : {"gradient", "model"} (default: ``"gradient"``)
        ``gradient`` (RESAM proper): replies carry the worker's momentum (a gradient-like direction) and the
        server takes the step. ``model``: replies carry trained weights, as from any FedAvg client; the rule
        runs on the updates ``reply - θ_t`` and ``θ_{t+1} = θ_t + γ_t R_t``.
    lr : float or LRSchedule, optional
        Server learning rate γ (default 0.1 in ``gradient`` mode, 1.0 in ``model`` mode).
    lr_schedule : {"constant", "step", "inverse"} (default: ``"constant"``)
        Kind of schedule; its parameters (``step_size``, ``gamma``, ``decay``) go in ``lr_schedule_params``.
    weight_decay : float (default: 0.0)
        λ, applied by the server in ``gradient`` mode (as the authors' lab does).
    max_update_norm : float, optional
        Clip the aggregate ``R_t`` to this Euclidean norm before the step.
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes
        Node sampling, as in :class:`flwr.serverapp.strategy.FedAvg`.
    adversary : AdversaryHook, optional
        A simulated omniscient adversary (simulation only): it replaces the Byzantine nodes' replies with
        forged vectors computed from the honest replies, before screening and aggregation.
    evaluate_fn : callable, optional
        Centralised evaluation ``(round, arrays) -> MetricRecord``; used by :meth:`start` unless one is given
        there.
    seed : int (default: 0)
        Seeds node sampling (reproducible runs).
    node_wait_timeout : float (default: 600.0)
        How long sampling waits for ``min_available_nodes`` to connect before failing with a message that says
        how many are connected (e.g. a simulation started with fewer SuperNodes than ``num-clients``).
    checkpointer : CheckpointHook, optional
        Called at the end of every round with the current model (see
        :class:`resam_flower.strategies.checkpoint.Checkpointer`); its ``train_config()`` entries are sent
        to the workers.

    Notes
    -----
    Replies are processed in node-id order, whatever their arrival order, so that a run is bit-identical
    when repeated with the same node ids and seed (floating-point sums depend on the order of terms).
    :attr:`round_offset` (set when resuming from a checkpoint of round ``K``) is added to the round
    numbers Flower's :meth:`start` passes (which always count from 1).
    """

    def __init__(  # noqa: PLR0913 - mirrors FedAvg's flat signature
        self,
        aggregator: str | Aggregator = "nnm+cwtm",
        num_byzantine: int = 0,
        aggregator_params: dict[str, Any] | None = None,
        mode: str = "gradient",
        lr: float | LRSchedule | None = None,
        lr_schedule: str = "constant",
        lr_schedule_params: dict[str, float] | None = None,
        weight_decay: float = 0.0,
        max_update_norm: float | None = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        adversary: AdversaryHook | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        seed: int = 0,
        node_wait_timeout: float = 600.0,
        checkpointer: CheckpointHook | None = None,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
    ) -> None:
        super().__init__(
            fraction_train=check_float("fraction_train", fraction_train, low=0.0, high=1.0),
            fraction_evaluate=check_float("fraction_evaluate", fraction_evaluate, low=0.0, high=1.0),
            min_train_nodes=check_int("min_train_nodes", min_train_nodes, low=0),
            min_evaluate_nodes=check_int("min_evaluate_nodes", min_evaluate_nodes, low=0),
            min_available_nodes=check_int("min_available_nodes", min_available_nodes, low=0),
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
        )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.num_byzantine = check_int("num_byzantine", num_byzantine, low=0)
        self.rule = build(aggregator, f=self.num_byzantine, **(aggregator_params or {}))
        if self.rule.f != self.num_byzantine:
            raise ValueError(
                f"aggregator {self.rule.spec} has f={self.rule.f} but num_byzantine={num_byzantine}"
            )
        default_lr = 0.1 if mode == "gradient" else 1.0
        self.schedule = build_schedule(
            default_lr if lr is None else lr, lr_schedule, **(lr_schedule_params or {})
        )
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        self.max_update_norm = (
            None
            if max_update_norm is None
            else check_float("max_update_norm", max_update_norm, low=0.0, low_open=True)
        )
        self.adversary = adversary
        self.evaluate_fn = evaluate_fn
        self._rng = random.Random(seed)
        self.node_wait_timeout = check_float("node_wait_timeout", node_wait_timeout, low=0.0)
        self._spec: FlatSpec | None = None
        self._arrays: ArrayRecord | None = None
        self._sampled: set[int] | None = None
        self._current: ArrayRecord | None = None  # θ after the latest aggregate_train
        self._population: list[int] | None = None  # every connected node at the latest configure_train
        self._restored_population: list[int] | None = None
        self.checkpointer = checkpointer
        #: added to Flower's round numbers (which restart at 1): the round a resumed run starts after.
        self.round_offset = 0
        self.excluded_total: Counter = Counter()
        #: one dict per round: what was received, kept, excluded (and why), timings, the step taken.
        self.round_log: list[dict[str, Any]] = []
        self._sent_at: float | None = None

    @property
    def current_arrays(self) -> ArrayRecord | None:
        """The global model after the latest round (``None`` before the first)."""
        return self._current

    # ------------------------------------------------------------------------------------------
    def summary(self) -> None:
        """Log the configuration, as Flower's strategies do."""
        log(INFO, "\t├──> RESAM (resilient averaging of momentums):")
        log(
            INFO,
            "\t│\t├── Rule: %s (f=%d, needs %s)",
            self.rule.spec,
            self.num_byzantine,
            self.rule.requirement,
        )
        log(INFO, "\t│\t├── Mode: %s", self.mode)
        log(INFO, "\t│\t├── Server lr: %s", self.schedule.describe())
        log(INFO, "\t│\t├── Weight decay: %s | max update norm: %s", self.weight_decay, self.max_update_norm)
        log(INFO, "\t│\t└── Simulated adversary: %s", getattr(self.adversary, "describe", lambda: None)())
        super().summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Result:
        """:meth:`flwr.serverapp.strategy.Strategy.start`, using the strategy's ``evaluate_fn`` by default."""
        if kwargs.get("evaluate_fn") is None and len(args) < 5:
            kwargs["evaluate_fn"] = self.evaluate_fn
        fn = kwargs.get("evaluate_fn")
        if fn is not None and self.round_offset:
            kwargs["evaluate_fn"] = lambda rnd, arrays: fn(rnd + self.round_offset, arrays)
        return super().start(grid, initial_arrays, *args, **kwargs)

    # ------------------------------------------------------------------------------------------
    def _sample(self, grid: Grid, fraction: float, minimum: int) -> tuple[list[int], list[int]]:
        """Wait for enough nodes, then ``(sampled, all connected)``, both sorted, from the same listing."""
        need = max(self.min_available_nodes, minimum)
        deadline = time.monotonic() + self.node_wait_timeout
        while len(all_nodes := sorted(grid.get_node_ids())) < need:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"only {len(all_nodes)} nodes connected after {self.node_wait_timeout:g} s, "
                    f"{need} needed "
                    "(min_available_nodes); in a simulation, start as many SuperNodes as num-clients "
                    '(flwr run . --federation-config "num-supernodes=N")'
                )
            log(INFO, "Waiting for nodes to connect: %d connected (minimum %d).", len(all_nodes), need)
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        size = min(len(all_nodes), max(int(len(all_nodes) * fraction), minimum))
        return sorted(self._rng.sample(all_nodes, size)), all_nodes

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send them θ_t, the round, the server lr and the mode."""
        server_round += self.round_offset
        self._arrays = self._current = arrays
        if self.fraction_train == 0.0:
            return []
        if self._spec is None or list(arrays.keys()) != list(self._spec.keys):
            self._spec = FlatSpec.from_record(arrays)
        # The population is read after waiting for the nodes, not before: at the start of a simulation the
        # first listing can be empty, and the adversary must choose among the nodes that are really there.
        nodes, all_nodes = self._sample(grid, self.fraction_train, self.min_train_nodes)
        self._check_population(all_nodes)
        self._sampled = set(nodes)
        self._sent_at = time.perf_counter()
        config["server-round"] = server_round
        config["lr"] = self.schedule(server_round)
        config["resam-mode"] = self.mode
        for key, value in (self.checkpointer.train_config() if self.checkpointer else {}).items():
            config[key] = value
        extra = self.adversary.node_config(server_round, nodes, all_nodes) if self.adversary else {}
        log(INFO, "configure_train: sampled %d nodes (out of %d)", len(nodes), len(all_nodes))
        messages = []
        for node in nodes:
            cfg = config
            if node in extra:
                cfg = ConfigRecord({**dict(config), **extra[node]})
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
            messages.append(Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, aggregate the valid ones with the rule, take the server step.

        Nothing a reply contains can make this raise. Should a bug raise all the same, the round keeps the
        current model, says so (``skipped`` = ``internal error: ...``, logged as an error), the run goes on.
        """
        try:
            return self._aggregate_train(server_round + self.round_offset, replies)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one round, not the run
            reason = f"internal error: {type(exc).__name__}: {exc}"
            log(ERROR, "aggregate_train: round %d keeps the current model: %s", server_round, reason)
            self.round_log.append({"round": server_round + self.round_offset, "skipped": reason})
            return None, MetricRecord({"skipped": 1.0, "internal-error": 1.0})

    def _aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        replies = sorted(replies, key=_sender_key)  # arrival order must not change the result
        entry: dict[str, Any] = {"round": server_round, "received": len(replies)}
        if self._sampled is not None:
            entry["missing"] = len(self._sampled - {_sender_key(m)[1] for m in replies})
        if self._spec is None or self._arrays is None:
            log(WARNING, "aggregate_train called before configure_train: keeping the model")
            return None, None
        theta = self._spec.flatten(self._arrays)
        attack_metrics: dict[str, float] = {}
        if self.adversary is not None:
            ref = theta if self.mode == "model" else None
            try:
                replies, attack_metrics = self.adversary.corrupt(server_round, replies, self._spec, ref)
            except ValueError as exc:  # e.g. too few honest replies for the attack's formula
                log(WARNING, "aggregate_train: simulated adversary failed (%s): replies left as sent", exc)
                attack_metrics = {"attack-failed": 1.0}
        screened = screen_replies(replies, self._spec, self._sampled)
        for node, reason in screened.details:
            log(WARNING, "aggregate_train: excluded reply from node %s: %s", node, reason)
        self.excluded_total.update(screened.excluded)
        n = len(screened.node_ids)
        entry.update(
            valid=n,
            excluded=screened.num_excluded,
            **{f"excluded-{k}": v for k, v in screened.excluded.items()},
        )
        new_arrays = None
        need = self.rule.min_inputs(self.num_byzantine)
        if n < need:
            entry["skipped"] = (
                f"{n} valid replies, {self.rule.spec} needs {self.rule.requirement} (>= {need})"
            )
        else:
            x = screened.vectors
            if self.mode == "model":
                x -= theta
            try:
                agg = self.rule(x)
            except ValueError as exc:  # NonFiniteInputError included: the round is skipped, not the run
                agg = None
                entry["skipped"] = f"rule failed: {exc}"
            if agg is not None:
                new_arrays = self._step(server_round, theta, agg, entry)
        if "skipped" in entry:
            log(
                WARNING,
                "aggregate_train: round %d keeps the current model: %s",
                server_round,
                entry["skipped"],
            )
        now = time.perf_counter()
        entry["aggregate-time-s"] = now - t0
        if self._sent_at is not None:  # instructions sent -> model updated: the round's wall time
            entry["round-time-s"] = now - self._sent_at
            self._sent_at = None
        entry.update(attack_metrics)
        metrics = MetricRecord(
            {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and k != "round"}
        )
        metrics["skipped"] = 1.0 if "skipped" in entry else 0.0
        for key, value in median_metrics(screened.messages).items():
            if key not in metrics:  # a client cannot overwrite the server's own figures
                metrics[key] = value
        self.round_log.append(entry)
        if new_arrays is not None:
            self._current = new_arrays
        return new_arrays, metrics

    def _step(
        self, server_round: int, theta: torch.Tensor, agg: torch.Tensor, entry: dict[str, Any]
    ) -> ArrayRecord | None:
        agg = agg.to(theta.dtype)
        norm = float(torch.linalg.vector_norm(agg, dtype=torch.float64))  # float32 squares overflow at 1.8e19
        if not math.isfinite(norm):
            entry["skipped"] = "aggregate is not finite"
            return None
        if self.max_update_norm is not None and norm > self.max_update_norm:
            agg = agg * (self.max_update_norm / norm)
        lr = self.schedule(server_round)
        if self.mode == "gradient":
            step = agg if self.weight_decay == 0.0 else agg + self.weight_decay * theta
            new_theta = theta - lr * step
        else:
            new_theta = theta + lr * agg
        entry.update({"lr": lr, "aggregate-norm": norm})
        if not bool(torch.isfinite(new_theta).all()):
            entry["skipped"] = "the step overflows the model's dtype"
            return None
        assert self._arrays is not None and self._spec is not None
        return self._spec.unflatten(new_theta, like=self._arrays)

    # ------------------------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes for federated evaluation (seeded)."""
        server_round += self.round_offset
        if self.fraction_evaluate == 0.0:
            return []
        nodes, _ = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=MessageType.EVALUATE, dst_node_id=n) for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Coordinate-wise median of the numeric metrics reported (robust to clients that lie).

        This is the last strategy hook of a round: the checkpointer, if any, runs here.
        """
        ok = [m for m in replies if not m.has_error()]
        metrics = median_metrics(ok)
        if self.checkpointer is not None and self._current is not None:
            self.checkpointer.end_of_round(self, server_round + self.round_offset, self._current)
        return MetricRecord(metrics) if metrics else None

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Server state beyond the model: sampling RNG, rule state, exclusion counts, round log."""
        return {
            "rng": self._rng.getstate(),
            "rule": self.rule.state_dict(),
            "excluded_total": dict(self.excluded_total),
            "round_log": list(self.round_log),
            "adversary": self.adversary.state_dict() if hasattr(self.adversary, "state_dict") else None,
            "population": self._population,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self._rng.setstate(state["rng"])
        self.rule.load_state_dict(state["rule"])
        self.excluded_total = Counter(state["excluded_total"])
        self.round_log = list(state["round_log"])
        if state.get("adversary") is not None and hasattr(self.adversary, "load_state_dict"):
            self.adversary.load_state_dict(state["adversary"])
        self._restored_population = state.get("population")

    def _check_population(self, all_nodes: list[int]) -> None:
        """After a restore: warn if the connected nodes are not those of the checkpoint."""
        self._population = all_nodes
        old, self._restored_population = self._restored_population, None
        if old is not None and list(old) != all_nodes:
            log(
                WARNING,
                "resumed run: the %d connected node ids differ from the %d of the checkpoint; sampling and "
                "the adversary's choice now refer to other nodes (the run cannot match an uninterrupted one)",
                len(all_nodes),
                len(old),
            )


def _sender_key(msg: Message) -> tuple[int, int]:
    """Sort key by source node id (messages without a readable one first)."""
    try:
        return 1, int(msg.metadata.src_node_id)
    except Exception:  # noqa: BLE001 - a malformed message has no trustworthy sender
        return 0, -1
