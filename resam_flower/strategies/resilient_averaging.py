"""RESAM's server: resilient averaging of the workers' momentums, as a Flower strategy."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from logging import ERROR, INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from .. import protocol as P
from ..aggregators import Aggregator, build
from ..aggregators.base import check_float, check_int
from ..flat import FlatSpec, safe_text
from .robust_metrics import median_metrics, quorum
from .rounds import run_rounds
from .sampling import NodeSampler, NodeWaiter
from .schedules import LRSchedule, build_schedule
from .step import resam_step, robust_buffers
from .validation import ExclusionLog, screen_replies

__all__ = ["ResilientAveraging"]

#: Exclusion categories that prove a sampled node faulty (it sent something no correct node sends): the rule
#: runs with f - k. Error replies (a ClientApp that raised, maybe an honest node out of memory), missing
#: replies and replies of the wrong kind (an honest device set up without momentum_mod) do not count: they
#: prove nothing about the node's intent, and counting them would let honest mistakes lower f.
PROVEN_FAULTY = ("content", "records", "type", "keys", "shape", "dtype", "decode", "nonfinite")
#: In ``model`` mode the replies come from the user's own training code: an honest node whose local training
#: diverged sends NaN, one that converts its weights may send float64. Those prove nothing there.
PROVEN_FAULTY_MODEL = tuple(k for k in PROVEN_FAULTY if k not in ("nonfinite", "dtype"))
#: FedAvg's weighting key: like FedAvg, never reported as a client metric.
WEIGHTING_KEY = "num-examples"


def _user_key(key: str) -> bool:
    """A client metric the user's app sent (not a ``resam-`` protocol key, nor the weighting key)."""
    return not key.startswith(P.PREFIX) and key != WEIGHTING_KEY


class ResilientAveraging(Strategy):
    r"""Resilient averaging of momentums (RESAM), Farhadkhani et al., ICML 2022.

    Each round the sampled workers reply with their local momentum
    :math:`m_t^i = \beta m_{t-1}^i + (1-\beta) g_t^i` (:func:`resam_flower.clients.momentum_mod`). The
    server screens the replies, aggregates the valid ones with a resilient averaging rule
    :math:`R_t = F(m_t^1, \dots, m_t^n)` and steps :math:`\theta_{t+1} = \theta_t - \gamma_t (R_t +
    \lambda\theta_t)` (:func:`~resam_flower.strategies.step.resam_step`) on the parameters; the model's float
    buffers (BatchNorm statistics) become the coordinate-wise median of the values the workers report.

    Parameters
    ----------
    aggregator : str or Aggregator (default: ``"nnm+cwtm"``)
        Rule spec for :func:`resam_flower.aggregators.build` (``"cwtm"``, ``"nnm+krum"``...) or a built rule.
    num_byzantine : int (default: 0)
        ``f``: how many Byzantine nodes the rule must tolerate.
    aggregator_params : dict, optional
        Extra parameters for the rule.
    mode : {"gradient", "model"} (default: ``"gradient"``)
        ``gradient`` (RESAM): replies carry the worker's momentum (``momentum_mod``). ``model``: replies are
        trained weights from unchanged FedAvg clients; the rule runs on ``reply - θ_t`` and
        ``θ_{t+1} = θ_t + γ_t R_t``. A reply of the other kind is excluded with a reason saying how to fix it.
    lr : float or LRSchedule, optional
        Server learning rate γ (default 0.1 in ``gradient`` mode, 1.0 in ``model`` mode). It is the server's:
        the clients' own ``lr`` (or any key of your train config) is never written.
    lr_schedule, lr_schedule_params
        ``"constant"``, ``"step"`` (``step_size``, ``gamma``), ``"inverse"`` (``decay``: γ/(1+t/decay)) or
        ``"debiased"`` (``beta``, the workers' momentum: γ/(1-β^t), momentum's bias correction).
    weight_decay : float (default: 0.0)
        λ, on the parameters only, in ``gradient`` mode.
    max_update_norm : float, optional
        Clip :math:`\|R_t\|` to this norm before the step.
    buffers : list of str, optional
        Keys of the model's float buffers (:func:`resam_flower.flat.buffer_keys` of the model). Default:
        PyTorch's BatchNorm names (``*.running_mean``, ``*.running_var``).
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes
        Node sampling, as in :class:`flwr.serverapp.strategy.FedAvg` (seeded by ``seed``).
    evaluate_fn : callable, optional
        Centralised evaluation ``(round, arrays) -> MetricRecord``; used by :meth:`start` unless one is given.
    seed : int (default: 0)
        Seeds node sampling.
    round_timeout : float (default: 600.0)
        Seconds :meth:`start` waits for a round's replies (Flower's default is an hour); late nodes count as
        ``missing``.
    node_wait_timeout, node_stall_timeout : float (default: 600.0, 30.0)
        Before a round, wait for enough nodes at most this long in all, and at most ``node_stall_timeout``
        without a new node connecting. Then, before the first round, fail with the numbers and what to pass;
        in later rounds (a deployment that lost nodes) log the shortfall and go on with the nodes connected:
        a round with too few replies for the rule is skipped, saying why, and the run goes on.
    exclusions_reduce_f : bool (default: True)
        A reply excluded as invalid (NaN, wrong shape or dtype, unreadable...) proves its node faulty; with
        ``k`` of them the rule runs with ``f - k`` on the remaining replies (at most ``f - k`` of them can be
        Byzantine). Missing, error and wrong-kind replies do not reduce ``f``: a late reply, a ClientApp that
        raised, or one set up without ``momentum_mod`` may be an honest node's. In ``model`` mode NaN and
        dtype exclusions do not reduce ``f`` either: an honest node's own training may diverge or convert.
    metric_keys : list of str, optional
        Client metrics to aggregate. Default: any key, at most 32. Each is the median over the valid replies
        (element-wise for lists, as FedAvg averages lists) and is reported only when at least ``2f + 1``
        replies report it, so that the honest values are a majority; a key left out is logged once, with why.
        The round's MetricRecord holds them under their own names, as FedAvg's does, beside the server's
        figures under ``resam-`` names (``resam-valid``, ``resam-excluded``, ``resam-f``, ``resam-lr``,
        ``resam-skipped``...; :func:`resam_flower.protocol.server_metric`).
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn : callable, optional
        FedAvg's hooks ``(contents: list[RecordDict], weighting_key: str) -> MetricRecord``: aggregate the
        client metrics your way instead of the median, over the valid replies only. Your function decides
        how robust that is (FedAvg's weighted mean is not: one client claiming a huge ``num-examples`` sets
        it).
    fail_if_no_progress : bool (default: True)
        :meth:`start` raises :class:`NoProgressError` when every round was skipped.
    """

    def __init__(  # noqa: PLR0913 - a flat signature, as Flower's strategies have
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
        buffers: Iterable[str] | None = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        seed: int = 0,
        round_timeout: float = 600.0,
        node_wait_timeout: float = 600.0,
        node_stall_timeout: float = 30.0,
        exclusions_reduce_f: bool = True,
        metric_keys: Iterable[str] | None = None,
        fail_if_no_progress: bool = True,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        weighted_by_key: str | None = None,
    ) -> None:
        if not isinstance(aggregator, (str, Aggregator, list, tuple)):
            raise TypeError(
                f"aggregator must be a rule name (e.g. 'cwtm', 'nnm+krum') or an Aggregator, got "
                f"{aggregator!r}: FedAvg's first argument is fraction_train, pass it by name "
                "(fraction_train=...)"
            )
        if weighted_by_key is not None:
            raise TypeError(
                f"weighted_by_key={weighted_by_key!r}: RESAM weighs every reply equally (a Byzantine node "
                "could claim any number of examples and so set the aggregate); remove the argument"
            )
        for name, fn in (("train_metrics_aggr_fn", train_metrics_aggr_fn),
                         ("evaluate_metrics_aggr_fn", evaluate_metrics_aggr_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable (contents, weighting_key) -> MetricRecord, got "
                                f"{fn!r}")
        self.train_metrics_aggr_fn = train_metrics_aggr_fn
        self.evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn
        self._metric_notes: set[tuple[str, str]] = set()  # (phase, key) of client metrics left out, said once
        self._said_small_evaluation = False
        self._said_local_lr = False
        if mode not in P.MODES:
            raise ValueError(f"mode must be one of {P.MODES}, got {mode!r}")
        self.mode = mode
        self.num_byzantine = check_int("num_byzantine", num_byzantine, low=0)
        self.rule = build(aggregator, f=self.num_byzantine, **(aggregator_params or {}))
        if self.rule.f != self.num_byzantine:
            raise ValueError(
                f"aggregator {self.rule.spec} has f={self.rule.f} but num_byzantine={num_byzantine}"
            )
        if any(
            getattr(stage, "name", "") == "monna" and getattr(stage, "trusted", None) is None
            for stage in [self.rule, *getattr(self.rule, "pre", ()), getattr(self.rule, "rule", None)]
        ):
            raise ValueError(
                f"{self.rule.spec} trusts one input (idx): the server orders replies by node id, so that "
                "node would steer the model. MoNNA needs the server's own vector (monna(trusted=...)); "
                "use another rule"
            )
        self.schedule = build_schedule(
            (0.1 if mode == "gradient" else 1.0) if lr is None else lr,
            lr_schedule,
            **(lr_schedule_params or {}),
        )
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        self.max_update_norm = (
            None
            if max_update_norm is None
            else check_float("max_update_norm", max_update_norm, low=0.0, low_open=True)
        )
        self.buffers = None if buffers is None else [str(b) for b in buffers]
        self.fraction_train = check_float("fraction_train", fraction_train, low=0.0, high=1.0)
        self.fraction_evaluate = check_float("fraction_evaluate", fraction_evaluate, low=0.0, high=1.0)
        if self.schedule.kind == "debiased" and self.fraction_train < 1.0:
            log(
                WARNING,
                "lr schedule %s divides by 1 - beta^t for the round t; with fraction_train=%s a sampled "
                "worker's momentum has seen fewer rounds, so its bias is corrected only in part",
                self.schedule.describe(),
                self.fraction_train,
            )
        self.min_train_nodes = check_int("min_train_nodes", min_train_nodes, low=0)
        self.min_evaluate_nodes = check_int("min_evaluate_nodes", min_evaluate_nodes, low=0)
        self.min_available_nodes = check_int("min_available_nodes", min_available_nodes, low=0)
        self.evaluate_fn = evaluate_fn
        self.round_timeout = check_float("round_timeout", round_timeout, low=0.0, low_open=True)
        waiter = NodeWaiter(
            check_float("node_wait_timeout", node_wait_timeout, low=0.0),
            check_float("node_stall_timeout", node_stall_timeout, low=0.0),
        )
        self.sampler = NodeSampler(seed, self.min_available_nodes, waiter)
        self.exclusions_reduce_f = bool(exclusions_reduce_f)
        self.metric_keys = None if metric_keys is None else sorted(set(metric_keys))
        self.fail_if_no_progress = bool(fail_if_no_progress)
        self.arrayrecord_key, self.configrecord_key = arrayrecord_key, configrecord_key
        self._spec: FlatSpec | None = None
        self._sampled: set[int] | None = None
        self._current: ArrayRecord | None = None  # θ_t, then θ_{t+1} once a round aggregates
        self._sent_at: float | None = None
        self._explain = ExclusionLog()
        #: added to Flower's round numbers (which restart at 1): the round a resumed run starts after.
        self.round_offset = 0
        self.excluded_total: Counter = Counter()
        #: one dict per round: what was received, kept, excluded (and why), timings, the step taken.
        self.round_log: list[dict[str, Any]] = []
        #: R_t of the latest round that aggregated (parameters only), for diagnostics.
        self.last_aggregate: torch.Tensor | None = None

    @property
    def current_arrays(self) -> ArrayRecord | None:
        """The global model after the latest round (``None`` before the first)."""
        return self._current

    @property
    def spec(self) -> FlatSpec | None:
        """The model's layout (parameters first, then float buffers), known after the first round."""
        return self._spec

    def summary(self) -> None:
        """Log what the strategy does and what the clients receive."""
        log(INFO, "\t├──> RESAM (resilient averaging of momentums):")
        log(
            INFO,
            "\t│\t├── Rule: %s (f=%d, needs %s)",
            self.rule.spec,
            self.num_byzantine,
            self.rule.requirement,
        )
        log(
            INFO,
            "\t│\t├── Mode: %s (replies must be %s)",
            self.mode,
            "momentums (momentum_mod)" if self.mode == "gradient" else "trained weights",
        )
        log(
            INFO,
            "\t│\t├── Server lr: %s | weight decay: %s | max update norm: %s",
            self.schedule.describe(),
            self.weight_decay,
            self.max_update_norm,
        )
        log(
            INFO,
            "\t│\t├── Sampling: fraction_train=%s, min_train_nodes=%d, min_available_nodes=%d",
            self.fraction_train,
            self.min_train_nodes,
            self.min_available_nodes,
        )
        log(
            INFO,
            "\t│\t├── Evaluation: fraction_evaluate=%s, min_evaluate_nodes=%d, evaluate_fn=%s",
            self.fraction_evaluate,
            self.min_evaluate_nodes,
            "yes" if self.evaluate_fn is not None else "no",
        )
        log(
            INFO,
            "\t│\t├── Replies weighted: equally (num-examples is never used); client metrics: %s",
            f"train: {'your train_metrics_aggr_fn' if self.train_metrics_aggr_fn else 'median'}, "
            f"evaluate: {'your evaluate_metrics_aggr_fn' if self.evaluate_metrics_aggr_fn else 'median'} "
            "(medians of keys >= 2f+1 replies report)",
        )
        log(INFO, "\t│\t├── Records: arrays under %r, config under %r", self.arrayrecord_key,
            self.configrecord_key)
        log(
            INFO,
            "\t│\t└── Clients receive your train config unchanged, plus %s (unless yours has it), %s, %s, "
            "%s, %s",
            P.FLOWER_SERVER_ROUND,
            P.SERVER_ROUND,
            P.SERVER_LR,
            P.MODE,
            P.BUFFERS,
        )

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Result:
        """:meth:`flwr.serverapp.strategy.Strategy.start` (same arguments) with RESAM's defaults: the round
        deadline ``round_timeout``, ``evaluate_fn`` from the constructor, ``Result.arrays`` always the model,
        and :class:`NoProgressError` when every round was skipped (see :func:`run_rounds`)."""
        return run_rounds(self, self, grid, initial_arrays, *args, **kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes; send θ_t, the user's train config unchanged, and RESAM's own ``resam-`` keys."""
        server_round += self.round_offset
        self._current = arrays
        if self.fraction_train == 0.0:
            return []
        if self._spec is None or list(arrays.keys()) != list(self._spec.keys):
            self._spec = FlatSpec.from_record(arrays, self.buffers)
        first = self._first_round()  # a shortfall before round 1 is a setup mistake; later, lost nodes
        need = self.rule.min_inputs(self.num_byzantine) if first else 0
        why = f"{self.rule.spec} with num_byzantine={self.num_byzantine} needs {need} replies a round"
        nodes, all_nodes = self.sampler.sample(
            grid, self.fraction_train, self.min_train_nodes, need, why, strict=first
        )
        if len(nodes) < need:
            raise ValueError(
                f"{self.rule.spec} with num_byzantine={self.num_byzantine} needs {self.rule.requirement}, "
                f"i.e. at least {need} replies a round, but only {len(nodes)} of the {len(all_nodes)} "
                f"connected nodes are sampled (fraction_train={self.fraction_train}, min_train_nodes="
                f"{self.min_train_nodes}); connect more nodes, raise fraction_train, or lower num_byzantine"
            )
        self.sampler.observe(all_nodes)
        self._sampled = set(nodes)
        self._sent_at = time.perf_counter()
        cfg = ConfigRecord(dict(config))
        if P.FLOWER_SERVER_ROUND not in cfg:  # as FedAvg sends it; a key the user set stays theirs
            cfg[P.FLOWER_SERVER_ROUND] = server_round
        cfg[P.SERVER_ROUND] = server_round
        cfg[P.SERVER_LR] = self.schedule(server_round)
        cfg[P.MODE] = self.mode
        cfg[P.BUFFERS] = list(self._spec.buffer_keys)  # even none: the mod must not guess BatchNorm names
        log(INFO, "configure_train: sampled %d nodes (out of %d)", len(nodes), len(all_nodes))
        return [self._message(node, arrays, cfg, MessageType.TRAIN) for node in nodes]

    def _message(self, node: int, arrays: ArrayRecord, config: ConfigRecord, kind: str) -> Message:
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return Message(content=content, message_type=kind, dst_node_id=node)

    # -- aggregation ------------------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, aggregate the valid ones with the rule, take the server step.

        Nothing a reply contains can make this raise. Should a bug raise all the same, the round keeps the
        current model, says so (``skipped`` = ``internal error: ...``, logged as an error), the run goes on.
        """
        server_round += self.round_offset
        try:
            return self._aggregate_train(server_round, list(replies))
        except Exception as exc:  # noqa: BLE001 - a bug must cost one round, not the run
            reason = safe_text(f"internal error: {type(exc).__name__}: {exc}")
            log(ERROR, "aggregate_train: round %d keeps the current model: %s", server_round, reason)
            self.round_log.append({"round": server_round, "skipped": reason})
            skipped = {P.server_metric("skipped"): 1.0, P.server_metric("internal-error"): 1.0}
            return None, MetricRecord(skipped)

    def _aggregate_train(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord]:
        t0 = time.perf_counter()
        replies.sort(key=_sender_key)  # arrival order must not change the result
        entry: dict[str, Any] = {"round": server_round, "received": len(replies)}
        if self._sampled is not None:
            entry["missing"] = len(self._sampled - {_sender_key(m)[1] for m in replies})
        if self._spec is None or self._current is None:
            log(WARNING, "aggregate_train called before configure_train: keeping the model")
            return None, MetricRecord({P.server_metric("skipped"): 1.0})
        spec = self._spec
        screened = screen_replies(replies, spec, self._sampled, mode=self.mode)
        self._explain(screened.details)
        self.excluded_total.update(screened.excluded)
        proven = PROVEN_FAULTY if self.mode == "gradient" else PROVEN_FAULTY_MODEL
        faulty = sum(v for k, v in screened.excluded.items() if k in proven)
        f_eff = max(self.num_byzantine - faulty, 0) if self.exclusions_reduce_f else self.num_byzantine
        n = len(screened.node_ids)
        entry.update(valid=n, excluded=screened.num_excluded, f=f_eff)
        entry.update({f"excluded-{k}": v for k, v in screened.excluded.items()})
        self._compare_local_lr(server_round, screened.messages)
        new_arrays = self._update(server_round, screened.vectors, f_eff, entry)
        if "skipped" in entry and entry.get("missing"):  # e.g. local training longer than the deadline
            entry["skipped"] += (
                f"; {entry['missing']} sampled node(s) sent no reply before the round's deadline "
                f"(round_timeout={self.round_timeout:g} s, unless start(timeout=...) set another: raise it "
                "if local training takes longer)"
            )
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
            entry["round-time-s"], self._sent_at = now - self._sent_at, None
        figures = {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and k != "round"}
        figures["skipped"] = 1.0 if "skipped" in entry else 0.0
        metrics: dict[str, Any] = {P.server_metric(k): v for k, v in figures.items()}
        client = self._client_metrics("train", screened.messages, f_eff)
        metrics.update({k: v for k, v in client.items() if k not in metrics})
        self.round_log.append(entry)
        if new_arrays is not None:
            self._current = new_arrays
        return new_arrays, MetricRecord(metrics)

    def _update(
        self, server_round: int, x: torch.Tensor, f: int, entry: dict[str, Any]
    ) -> ArrayRecord | None:
        """θ_{t+1} from the valid rows ``x`` (parameters, then buffers), else ``None`` (and the reason)."""
        assert self._spec is not None and self._current is not None
        spec, n = self._spec, x.shape[0]
        need = self.rule.min_inputs(f)
        if n < need:
            entry["skipped"] = (
                f"{n} valid replies, {self.rule.spec} needs {self.rule.requirement} (>= {need}, f={f})"
            )
            return None
        theta = spec.flatten(self._current)
        p = spec.param_dim
        params = x[:, :p]
        if self.mode == "model":
            params -= theta[:p]
        try:
            self.rule.last_info = {}
            agg = self.rule.aggregate(params, f)
        except ValueError as exc:  # NonFiniteInputError included: the round is skipped, not the run
            entry["skipped"] = safe_text(f"rule failed: {exc}")
            return None
        lr = self.schedule(server_round)
        new_p, norm, reason = resam_step(
            theta[:p],
            agg,
            lr=lr,
            weight_decay=self.weight_decay,
            max_update_norm=self.max_update_norm,
            mode=self.mode,
        )
        entry.update({"lr": lr, "aggregate-norm": norm})
        if reason is not None:
            entry["skipped"] = reason
            return None
        new_theta = new_p if p == spec.dim else torch.cat([new_p, robust_buffers(x[:, p:])])
        overflow = spec.out_of_range(new_theta)
        if overflow is not None:
            entry["skipped"] = f"the step overflows {overflow}'s dtype"
            return None
        self.last_aggregate = agg
        return spec.unflatten(new_theta, like=self._current)

    # -- evaluation -------------------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes for federated evaluation (seeded); the user's config goes as it is."""
        if self.fraction_evaluate == 0.0:
            return []
        nodes, _ = self.sampler.sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, strict=False)
        need = quorum(self.num_byzantine)
        small = 0 < len(nodes) < need and self.evaluate_metrics_aggr_fn is None
        if small and not self._said_small_evaluation:
            self._said_small_evaluation = True
            log(WARNING, "configure_evaluate: %d nodes sampled, but client evaluation metrics need 2f + 1 = "
                "%d replies to be robust: none will be reported (raise fraction_evaluate or "
                "min_evaluate_nodes, or pass evaluate_metrics_aggr_fn)", len(nodes), need)
        rnd = server_round + self.round_offset
        cfg = ConfigRecord({P.FLOWER_SERVER_ROUND: rnd, **dict(config), P.SERVER_ROUND: rnd})
        return [self._message(node, arrays, cfg, MessageType.EVALUATE) for node in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Median of each metric reported by at least ``2f + 1`` replies (robust to clients that lie); error
        replies are counted and their reasons logged, as FedAvg does, and left out."""
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        errors = [m for m in replies if m.has_error()]
        log(INFO, "aggregate_evaluate: received %d results and %d failures", len(ok), len(errors))
        for msg in errors:
            node = _sender_key(msg)[1]
            log(WARNING, "\t> evaluate error from node %s: %s", node, safe_text(str(msg.error.reason)))
        if replies and not ok:
            log(WARNING, "aggregate_evaluate: round %d: every evaluate reply failed; no client metrics",
                server_round + self.round_offset)
        metrics = self._client_metrics("evaluate", ok, self.num_byzantine)
        return MetricRecord(metrics) if metrics else None

    def _compare_local_lr(self, server_round: int, messages: list[Message]) -> None:
        """Say once when momentum_mod divided the clients' trained weights by a local lr other than the
        server's: each round then moves lr / η times as far as FedAvg's would."""
        if self._said_local_lr or self.mode != "gradient":
            return
        etas = []
        for msg in messages:
            eta = next((v for v in P.reply_numbers(msg, P.USED_LOCAL_LR) if v > 0), None)
            if eta is not None:
                etas.append(eta)
        if not etas:
            return
        self._said_local_lr = True
        eta, lr = sorted(etas)[len(etas) // 2], self.schedule(server_round)
        if abs(lr - eta) > 1e-9 * max(abs(lr), abs(eta)):
            log(WARNING, "momentum_mod turned the clients' trained weights into gradients with their local "
                "lr %g; the server steps with lr %g, so a round moves %.3g times as far as FedAvg's (pass "
                "lr=%g to ResilientAveraging for FedAvg's step)", eta, lr, lr / eta, eta)

    def _client_metrics(self, phase: str, messages: list[Message], f: int) -> dict[str, Any]:
        """The round's client metrics: the user's ``<phase>_metrics_aggr_fn`` over the valid replies, else
        the robust medians (:func:`median_metrics`); keys left out are logged once each, with why."""
        fn = self.train_metrics_aggr_fn if phase == "train" else self.evaluate_metrics_aggr_fn
        if fn is not None:
            if not messages:
                return {}
            try:  # the user's function: its bug costs this round's client metrics, said, not the model
                result = dict(MetricRecord(dict(fn([m.content for m in messages], WEIGHTING_KEY) or {})))
                return {k: v for k, v in result.items() if not k.startswith(P.PREFIX)}
            except Exception as exc:  # noqa: BLE001
                log(ERROR, "%s_metrics_aggr_fn raised %s: %s; no client metrics this round", phase,
                    type(exc).__name__, safe_text(str(exc)))
                return {}
        dropped: dict[str, str] = {}
        metrics = median_metrics(messages, f=f, allowed=self.metric_keys, dropped=dropped)
        metrics = {k: v for k, v in metrics.items() if _user_key(k)}
        for key, why in sorted((k, w) for k, w in dropped.items() if _user_key(k)):
            if (phase, key) not in self._metric_notes and len(self._metric_notes) < 256:
                self._metric_notes.add((phase, key))
                log(WARNING, "%s client metric %s left out: %s (said once)", phase, safe_text(key), why)
        return metrics

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Server state beyond the model: sampling RNG, rule state, exclusion counts, round log, node ids."""
        return {
            **self.sampler.state_dict(),
            "rule": self.rule.state_dict(),
            "excluded_total": dict(self.excluded_total),
            "round_log": list(self.round_log),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.sampler.load_state_dict(state)
        self.rule.load_state_dict(state["rule"])
        self.excluded_total = Counter(state["excluded_total"])
        self.round_log = list(state["round_log"])

    def _first_round(self) -> bool:
        """No round ran yet in this strategy's life (a resumed one has its log and population back)."""
        return not self.round_log and self.sampler.population is None


def _sender_key(msg: Message) -> tuple[int, int]:
    """Sort key by source node id (messages without a readable one first)."""
    try:
        return 1, int(msg.metadata.src_node_id)
    except Exception:  # noqa: BLE001 - a malformed message has no trustworthy sender
        return 0, -1
