"""The simulated omniscient adversary, composed by :class:`ResilientAveraging` around (never inside) the rule.

In simulation the adversary of the literature sees every honest reply of the round. This hook

* picks the Byzantine nodes once, seeded, among all connected nodes (:class:`resam_flower.attacks.Adversary`);
* tells them, in their train config, what to do: ``resam-byzantine = "omniscient"`` (skip training, their
  reply is replaced anyway) or ``"lf"`` (train on flipped labels: a data attack they run themselves);
* after the round, replaces the Byzantine replies with vectors forged from the valid honest ones
  (in ``model`` mode the attack acts on updates ``reply - θ``), *before* screening and aggregation.

The rule receives a plain stack of vectors: it never learns who is Byzantine.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Message, MetricRecord, RecordDict

from ..attacks import Adversary
from ..flat import FlatSpec
from .validation import screen_replies

__all__ = ["SimulatedAdversary", "BYZANTINE_CONFIG_KEY"]

#: Train-config key telling a node it is Byzantine this round, and how it acts.
BYZANTINE_CONFIG_KEY = "resam-byzantine"


class SimulatedAdversary:
    """Adapter from :class:`resam_flower.attacks.Adversary` to the strategy's adversary hook.

    Parameters
    ----------
    attack : str or Attack
        Attack name (``"alie"``, ``"ipm"``, ``"lf"``...) or built attack.
    num_byzantine : int
        Number of Byzantine nodes among all nodes.
    seed : int
        Seeds the choice of nodes (and the attack's randomness).
    **attack_params
        The attack's parameters (``z``, ``eps``, ``sigma``, ``aggregator`` ...).
    """

    def __init__(self, attack: Any, num_byzantine: int, seed: int = 0, **attack_params: Any) -> None:
        self.adversary = Adversary(attack, num_byzantine, seed=seed, **attack_params)

    @property
    def chosen(self) -> list[int] | None:
        """The Byzantine node ids (``None`` before the first round)."""
        return self.adversary.chosen

    def describe(self) -> str:
        return self.adversary.describe()

    def node_config(self, server_round: int, sampled: list[int], all_nodes: list[int]) -> dict[int, dict]:
        """Config entries for the sampled Byzantine nodes."""
        if self.adversary.chosen is None:
            self.adversary.choose(all_nodes)
        role = "lf" if self.adversary.data_attack else "omniscient"
        return {node: {BYZANTINE_CONFIG_KEY: role} for node in self.adversary.choose(sampled)}

    def corrupt(
        self, server_round: int, replies: list[Message], spec: FlatSpec, reference: torch.Tensor | None
    ) -> tuple[list[Message], dict[str, float]]:
        """Replace the Byzantine replies with forged vectors computed from this round's valid honest ones."""
        byz_nodes = set(self.adversary.chosen or [])
        byz = [i for i, m in enumerate(replies) if m.metadata.src_node_id in byz_nodes]
        metrics = {"byzantine-replies": float(len(byz))}
        if not byz or self.adversary.data_attack:
            return replies, metrics
        honest = screen_replies([m for i, m in enumerate(replies) if i not in set(byz)], spec, None)
        if len(honest.node_ids) == 0:
            return replies, metrics
        h = honest.vectors
        if reference is not None:
            h = h - reference
        forged = self.adversary.forge(h, count=len(byz))
        if reference is not None:
            forged = forged + reference
        out = list(replies)
        template = honest.messages[0].content.array_records
        like = next(iter(template.values()))
        for row, i in enumerate(byz):
            content = RecordDict(
                {
                    "arrays": spec.unflatten(forged[row], like=like),
                    "metrics": MetricRecord({"num-examples": 1}),
                }
            )
            out[i] = Message(content=content, metadata=replies[i].metadata)
        mu = honest.vectors.mean(0) if reference is None else h.mean(0)
        shift = (forged.mean(0) - mu).norm()
        metrics["attack-shift-norm"] = float(shift) if torch.isfinite(shift) else float("inf")
        return out, metrics

    def state_dict(self) -> dict[str, Any]:
        return self.adversary.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adversary.load_state_dict(state)
