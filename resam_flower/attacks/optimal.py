r"""Optimal ALIE / IPM: the attack factor tuned, at every call, against the aggregation rule in use.

The factor ``t`` (ALIE's ``z``, IPM's ``eps``) maximises the damage

.. math:: \phi(t) = \big\| F(x_1, \dots, x_h, b_t, \dots, b_t) - \mu \big\|,

where ``F`` is the rule (with its pre-aggregators) and ``b_t`` the base attack's vector for factor ``t``.
The idea is ByzFL's (Allouah et al., "Fixing by mixing", AISTATS 2023); the line search here differs:

1. evaluate ``phi`` at ``start`` (default: the base attack's default factor, so the result is never
   less damaging than the default attack);
2. probe both ``start + delta`` and ``start - delta``; if the better one improves, expand in its
   direction, doubling the step while the damage grows (the damage is often larger on one side only,
   e.g. towards one cluster of honest vectors on heterogeneous data);
3. contract: probe ``best +- step`` and shrink the step by ``ratio``, until ``evals`` evaluations are spent.

ByzFL's search starts at 0, only moves towards larger factors and uses ``delta = 10``. Against the plain
mean the damage is unbounded and the search returns the largest factor its budget reaches.

A stateful rule (centered clipping) is evaluated from the same state each time and left as it was:
the search never advances the server's rule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch

from ..aggregators import Aggregator
from ..aggregators import build as build_aggregator
from ..aggregators.base import NonFiniteInputError
from .alie import ALittleIsEnough
from .base import Attack, check_float, check_int, honest_mean, honest_std, replicate
from .ipm import DEFAULT_EPS

__all__ = ["OptimalALIE", "OptimalIPM", "line_search"]


def line_search(
    phi: Callable[[float], float], start: float, delta: float, ratio: float, evals: int
) -> tuple[float, float, int]:
    """Maximise ``phi`` over the reals by expansion then contraction; return ``(t, phi(t), evaluations)``."""
    best_t, best_y = start, phi(start)
    used = 1
    step = delta
    direction = 0.0
    for sign in (1.0, -1.0):  # probe both directions; expand towards the better one
        if used >= evals:
            break
        t = start + sign * step
        y = phi(t)
        used += 1
        if y > best_y:
            best_t, best_y, direction = t, y, sign
    while direction != 0.0 and used < evals:  # expansion
        step *= 2.0
        t = best_t + direction * step
        y = phi(t)
        used += 1
        if y <= best_y:
            break
        best_t, best_y = t, y
    step *= ratio
    while used < evals:  # contraction
        for sign in (1.0, -1.0):
            if used >= evals:
                break
            t = best_t + sign * step
            y = phi(t)
            used += 1
            if y > best_y:
                best_t, best_y = t, y
                break
        step *= ratio
    return best_t, best_y, used


class _OptimalFactor(Attack):
    """Shared machinery: the rule, the search parameters, the damage evaluation."""

    def __init__(
        self,
        f: int = 1,
        aggregator: str | Aggregator = "mean",
        evals: int = 20,
        start: float | None = None,
        delta: float = 1.0,
        ratio: float = 0.5,
    ) -> None:
        super().__init__(f)
        if isinstance(aggregator, str):
            aggregator = build_aggregator(aggregator, f=self.f)
        elif not isinstance(aggregator, Aggregator):
            raise ValueError(
                f"aggregator must be a rule spec (str) or a built Aggregator, got {aggregator!r:.80}"
            )
        self.aggregator = aggregator
        self.evals = check_int("evals", evals, low=1)
        self.start = None if start is None else check_float("start", start)
        self.delta = check_float("delta", delta, low=0.0, low_open=True)
        self.ratio = check_float("ratio", ratio, low=0.0, high=1.0, low_open=True, high_open=True)

    def default_factor(self, h: int, f: int) -> float:
        """The base attack's default factor (the search's default start)."""
        raise NotImplementedError

    def affine(self, honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)``: the base attack's vector for factor ``t`` is ``a + t * b`` (computed once per call)."""
        raise NotImplementedError

    def damage(self, honest: torch.Tensor, byzantine: torch.Tensor, mu: torch.Tensor | None = None) -> float:
        """``||F(honest ∪ byzantine) - mu||`` for the rule in use (``-inf`` if the rule cannot answer)."""
        mu = honest_mean(honest) if mu is None else mu
        try:
            out = self.aggregator(torch.cat([honest, byzantine], dim=0))
        except NonFiniteInputError:
            return -math.inf
        y = float(torch.linalg.vector_norm(out - mu))
        return y if math.isfinite(y) else -math.inf

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        agg = self.aggregator
        saved_state, saved_info = copy.deepcopy(agg.state_dict()), agg.last_info
        mu = honest_mean(honest)
        a, b = self.affine(honest)

        def phi(t: float) -> float:
            agg.load_state_dict(copy.deepcopy(saved_state))
            return self.damage(honest, replicate(torch.add(a, b, alpha=t), f), mu)

        start = self.default_factor(honest.shape[0], f) if self.start is None else self.start
        try:
            t, y, used = line_search(phi, start, self.delta, self.ratio, self.evals)
        finally:
            agg.load_state_dict(saved_state)
            agg.last_info = saved_info
        self.last_info.update(factor=t, damage=y, evals=used, start=start)
        return replicate(torch.add(a, b, alpha=t), f)

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"aggregator": self.aggregator.spec, "evals": self.evals}
        if self.start is not None:
            p["start"] = self.start
        p.update(delta=self.delta, ratio=self.ratio)
        return p


class OptimalALIE(_OptimalFactor):
    r"""ALIE with ``z`` tuned against the rule: :math:`\mu + z^\star\sigma`,
    :math:`z^\star = \arg\max_z \|F(x_1..x_h, \mu + z\sigma, ...) - \mu\|`.

    Parameters
    ----------
    aggregator : str or Aggregator (default: ``"mean"``)
        The rule the server uses (a spec such as ``"nnm+cwtm"``, built with this attack's ``f``, or the
        server's built rule). Pass the server's rule: the default only makes sense against plain averaging.
    evals : int (default: 20)
        Evaluations of the rule per call.
    start : float, optional
        First factor tried (default: the classic ALIE ``z`` for ``n = h + f``).
    delta : float (default: 1.0)
        First step of the search (> 0).
    ratio : float (default: 0.5)
        Contraction ratio of the step, in (0, 1).
    """

    name = "optimal-alie"

    def default_factor(self, h: int, f: int) -> float:
        return ALittleIsEnough(f=f).factor(h, f)

    def affine(self, honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return honest_mean(honest), honest_std(honest)


class OptimalIPM(_OptimalFactor):
    r"""IPM with ``eps`` tuned against the rule: :math:`-\varepsilon^\star\mu`,
    :math:`\varepsilon^\star = \arg\max_\varepsilon \|F(x_1..x_h, -\varepsilon\mu, ...) - \mu\|`.

    Parameters as :class:`OptimalALIE`; ``start`` defaults to the classic ``eps = 0.1``.
    """

    name = "optimal-ipm"

    def default_factor(self, h: int, f: int) -> float:
        return DEFAULT_EPS

    def affine(self, honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = honest_mean(honest)
        return torch.zeros_like(mu), -mu
