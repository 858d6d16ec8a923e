"""Composition of pre-aggregators in front of a rule: ``"arc+nnm+krum"``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Aggregator, PreAggregator

__all__ = ["Pipeline"]

_MAX_SEARCH = 100_000


class Pipeline(Aggregator):
    """Pre-aggregators ``P_1 .. P_k`` followed by a rule ``F``: ``F(P_k(...P_1(x)))``.

    Each stage receives the ``f`` its predecessor reports (non-finite rows dropped on the way reduce it;
    bucketing keeps it, as in ByzFL). The input condition is the conjunction of every stage's condition
    on the sizes that reach it.
    """

    name = "pipeline"

    def __init__(self, pre: Sequence[PreAggregator], rule: Aggregator) -> None:
        super().__init__(rule.f)
        if not isinstance(rule, Aggregator):
            raise TypeError(f"the last stage must be an aggregation rule, got {rule!r}")
        for p in pre:
            if not isinstance(p, PreAggregator):
                raise TypeError(f"only the last stage may be a rule; {p!r} is not a pre-aggregator")
            if p.f != rule.f:
                raise ValueError(f"all stages must share f: {p.spec} has f={p.f}, {rule.spec} has f={rule.f}")
        self.pre = list(pre)
        self.rule = rule

    @property
    def spec(self) -> str:  # type: ignore[override]
        return "+".join([p.spec for p in self.pre] + [self.rule.spec])

    @property
    def requirement(self) -> str:  # type: ignore[override]
        return "; ".join(f"{c.name}: {c.requirement}" for c in [*self.pre, self.rule])

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(repr(c) for c in [*self.pre, self.rule])})"

    def _accepts(self, n: int, f: int) -> bool:
        for p in self.pre:
            if n < p.min_inputs(f):
                return False
            n, f = p.output_shape(n, f)
        return n >= self.rule.min_inputs(f)

    def min_inputs(self, f: int | None = None) -> int:
        f = self.f if f is None else f
        for n in range(1, _MAX_SEARCH):
            if self._accepts(n, f):
                return n
        raise ValueError(f"{self.spec} accepts no input size below {_MAX_SEARCH} for f={f}")

    def kappa(self, n: int, f: int | None = None, d: int | None = None) -> float | None:
        return self.rule.kappa(n, f, d) if not self.pre else None

    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        self.check(x.shape[0], f)
        info: dict[str, Any] = {}
        for p in self.pre:
            p.last_info = {}
            x, f = p.apply(x, f)
            info[p.name] = dict(p.last_info)
        self.rule.last_info = {}
        out = self.rule.aggregate(x, f)
        info[self.rule.name] = dict(self.rule.last_info)
        self.last_info = info
        return out

    def reset(self) -> None:
        for c in [*self.pre, self.rule]:
            c.reset()

    def state_dict(self) -> dict[str, Any]:
        return {f"{i}:{c.name}": c.state_dict() for i, c in enumerate([*self.pre, self.rule])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, c in enumerate([*self.pre, self.rule]):
            c.load_state_dict(state.get(f"{i}:{c.name}", {}))
