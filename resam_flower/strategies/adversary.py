"""The simulated omniscient adversary: a wrapper around any RESAM strategy (simulation only).

In simulation the adversary of the literature sees every honest reply of the round. This wrapper

* picks the Byzantine nodes once, seeded, among all connected nodes (:class:`resam_flower.attacks.Adversary`);
* tells them, in their train config (``resam-byzantine``), what to do: ``"omniscient"`` (skip training, their
  reply is replaced anyway) or the attack's own client role (``"lf"``: train on flipped labels; ``"lf-lab"``:
  the mean of the honest nodes' flipped-label gradients, for which they are also sent the honest nodes'
  partitions, ``resam-honest-partitions``);
* with ``honest_data=True``, tells every node which slice of the data it holds (``resam-data-partition`` of
  ``resam-data-partitions``, :func:`resam_flower.data.assignment.data_assignment`): the data is split among
  the honest nodes only, as the authors' lab does;
* after the round, replaces the Byzantine replies with vectors forged from the valid honest ones (in
  ``model`` mode the attack acts on updates ``reply - θ``), *before* the wrapped strategy screens and
  aggregates: the rule never learns who is Byzantine;
* measures RESAM's mechanism each round (it knows the honest set H): the honest spread
  ``honest-spread-max`` = max_{i,j∈H} ‖m_i − m_j‖ and ``honest-spread-mean`` (mean pairwise distance),
  ``honest-mean-norm`` = ‖m̄_H‖, ``aggregation-error`` = ‖R_t − m̄_H‖ and ``kappa-empirical`` =
  error / spread-max (which a rule with a proven (f, κ) keeps ≤ κ), on the parameters.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from .. import protocol as P
from ..attacks import Adversary, Attack
from ..data.assignment import data_assignment, honest_partitions
from ..flat import FlatSpec
from . import resilient_averaging as _core
from .rounds import AttackNotRunError, StrategyWrapper, core_of
from .validation import screen_replies

__all__ = ["SimulatedAdversary", "spread_metrics"]


def spread_metrics(honest: torch.Tensor, aggregate: torch.Tensor | None) -> dict[str, float]:
    """Honest spread, ‖m̄_H‖, and (given ``R_t``) the aggregation error and its ratio to the spread."""
    h = honest.double()
    mean = h.mean(0)
    gram = h @ h.T
    sq = gram.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0).sqrt()
    k = h.shape[0]
    out = {
        "honest-spread-max": float(dist.max()) if k > 1 else 0.0,
        "honest-spread-mean": float(dist.sum() / (k * (k - 1))) if k > 1 else 0.0,
        "honest-mean-norm": float(mean.norm()),
    }
    if aggregate is not None:
        err = float((aggregate.double() - mean).norm())
        out["aggregation-error"] = err
        if out["honest-spread-max"] > 0:
            out["kappa-empirical"] = err / out["honest-spread-max"]
    return out


class SimulatedAdversary(StrategyWrapper):
    """Wrap ``strategy`` with an omniscient adversary controlling ``num_byzantine`` nodes (simulation only).

    Parameters
    ----------
    strategy : Strategy
        A :class:`~resam_flower.strategies.ResilientAveraging`, or a wrapper around one.
    attack : str, Attack or Adversary
        An attack name (``"alie"``, ``"ipm"``, ``"lf"``...), a built attack, or an
        :class:`~resam_flower.attacks.Adversary` (then ``num_byzantine`` and ``seed`` come from it).
    num_byzantine : int, optional
        Byzantine nodes among all nodes (required unless ``attack`` is an ``Adversary``).
    seed : int (default: 0)
        Seeds the choice of nodes (and the attack's randomness).
    honest_data : bool (default: False)
        Split the data among honest nodes only (the nodes' ClientApp must read ``resam-data-partition``).
    **attack_params
        The attack's parameters (``z``, ``eps``, ``aggregator``...), with an attack name only.

    Byzantine nodes must run :func:`resam_flower.clients.byzantine_mod` (outermost) so that they act on the
    role they are sent; it honours such roles only in a simulation.
    """

    def __init__(
        self,
        strategy: Strategy,
        attack: str | Attack | Adversary,
        num_byzantine: int | None = None,
        *,
        seed: int = 0,
        honest_data: bool = False,
        **attack_params: Any,
    ) -> None:
        super().__init__(strategy)
        if not isinstance(strategy, Strategy):
            raise TypeError(f"SimulatedAdversary wraps a Flower Strategy, got {type(strategy).__name__}")
        if not hasattr(core_of(strategy), "spec"):
            raise TypeError(
                f"SimulatedAdversary needs a ResilientAveraging inside, got {type(strategy).__name__}"
            )
        if isinstance(attack, Adversary):
            if attack_params or (num_byzantine is not None and num_byzantine != attack.num_byzantine):
                raise ValueError("with an Adversary, give no attack parameters and no other num_byzantine")
            self.adversary = attack
        else:
            if num_byzantine is None:
                raise ValueError("num_byzantine is required with an attack name or a built attack")
            self.adversary = Adversary(attack, num_byzantine, seed=seed, **attack_params)
        self.honest_data = bool(honest_data)
        self.role = self.adversary.client_role
        self._honest_vectors: torch.Tensor | None = None

    @property
    def chosen(self) -> list[int] | None:
        """The Byzantine node ids (``None`` before the first round)."""
        return self.adversary.chosen

    def describe(self) -> str:
        return self.adversary.describe()

    def summary(self) -> None:
        log(INFO, "\t├──> Simulated adversary: %s", self.describe())
        self.strategy.summary()

    # -- rounds ---------------------------------------------------------------------------------------
    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001 - Strategy's signature
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        population = core_of(self).sampler.population or [m.metadata.dst_node_id for m in messages]
        if self.adversary.chosen is None:
            self.adversary.choose(population)
        byzantine = set(self.adversary.choose(population))
        split: dict[int, tuple[int, int]] = {}
        if self.honest_data or self.adversary.needs_honest_data:
            split = data_assignment(population, sorted(byzantine), "honest" if self.honest_data else "all")
        sampled = [m.metadata.dst_node_id for m in messages]
        for msg in messages:
            node = msg.metadata.dst_node_id
            extra: dict[str, Any] = {}
            if node in byzantine:
                extra[P.ROLE] = self.role
                if self.adversary.needs_honest_data:
                    extra[P.HONEST_PARTITIONS] = honest_partitions(split, sampled, sorted(byzantine))
            if node in split:
                extra[P.DATA_PARTITION], extra[P.DATA_PARTITIONS] = split[node]
            if extra:
                key, cfg = next(iter(msg.content.config_records.items()))
                msg.content.config_records[key] = ConfigRecord({**dict(cfg), **extra})
        return messages

    def aggregate_train(self, server_round, replies):  # noqa: ANN001
        core = core_of(self)
        replies = sorted(replies, key=lambda m: _core._sender_key(m))  # the core's order: no arrival order
        metrics: dict[str, float] = {}
        self._honest_vectors = None
        if core.spec is not None and core.current_arrays is not None:
            try:
                replies, metrics = self._corrupt(replies, core)
            except ValueError as exc:  # e.g. too few honest replies for the attack's formula
                log(WARNING, "simulated adversary failed (%s): replies left as sent", exc)
                metrics = {"attack-failed": 1.0}
        core.last_aggregate = None
        arrays, out = self.strategy.aggregate_train(server_round, replies)
        if self._honest_vectors is not None and len(self._honest_vectors):
            agg = core.last_aggregate if arrays is not None else None
            metrics.update(spread_metrics(self._honest_vectors, agg))
        if core.round_log:
            core.round_log[-1].update(metrics)
        figures = {P.server_metric(k): v for k, v in metrics.items()}  # the server's figures: resam-*
        out = MetricRecord({**(dict(out) if out is not None else {}), **figures})
        return arrays, out

    def _check_roles_applied(self, byzantine: list[Message]) -> None:
        """Raise :class:`AttackNotRunError` when a Byzantine node replied without running its data attack
        (a deployed SuperNode ignores a server-sent role; an app without ``byzantine_mod`` never reads it):
        its honest reply would be recorded as the attack's."""
        ignored = [m.metadata.src_node_id for m in byzantine
                   if not m.has_error() and not P.reply_flag(m, P.ROLE_APPLIED)]
        if ignored:
            raise AttackNotRunError(
                f"attack {self.adversary.describe()}: {len(ignored)} of the {len(byzantine)} Byzantine nodes "
                f"that replied (e.g. node {ignored[0]}) did not run the role {self.role!r} the server sent; "
                "a data attack runs on the nodes themselves: in Flower's simulation engine with "
                "byzantine_mod outermost in the ClientApp's mods (a deployed SuperNode ignores roles a "
                f"server sends: give the device its own role, --node-config \"{P.NODE_ROLE}='lf'\")"
            )

    def _corrupt(self, replies: list[Message], core: Any) -> tuple[list[Message], dict[str, float]]:
        """Replace the Byzantine replies with vectors forged from this round's valid honest ones."""
        spec: FlatSpec = core.spec
        byz_nodes = set(self.adversary.chosen or [])
        byz = [i for i, m in enumerate(replies) if m.metadata.src_node_id in byz_nodes]
        metrics = {"byzantine-replies": float(len(byz))}
        honest = screen_replies(
            [m for i, m in enumerate(replies) if i not in set(byz)], spec, None, mode=core.mode
        )
        if len(honest.node_ids) == 0:
            return replies, metrics
        theta = spec.flatten(core.current_arrays) if core.mode == "model" else None
        h = honest.vectors if theta is None else honest.vectors - theta
        self._honest_vectors = h[:, : spec.param_dim]
        if self.adversary.data_attack:  # the nodes ran it: their replies stay as sent
            self._check_roles_applied([replies[i] for i in byz])
            return replies, metrics
        if not byz:
            return replies, metrics
        forged = self.adversary.forge(h, count=len(byz))
        shift = (forged.mean(0) - h.mean(0)).norm()
        if theta is not None:
            forged = forged + theta
        like = next(iter(honest.messages[0].content.array_records.values()))
        flag = {P.REPLY_MOMENTUM: 1.0} if core.mode == "gradient" else {}
        out = list(replies)
        for row, i in enumerate(byz):
            content = RecordDict(
                {"arrays": spec.unflatten(forged[row], like=like), "metrics": MetricRecord(flag)}
            )
            out[i] = Message(content=content, metadata=replies[i].metadata)
        metrics["attack-shift-norm"] = float(shift) if torch.isfinite(shift) else float("inf")
        return out, metrics

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self.strategy.state_dict(), "adversary": self.adversary.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.strategy.load_state_dict(state)
        if state.get("adversary") is not None:
            self.adversary.load_state_dict(state["adversary"])
