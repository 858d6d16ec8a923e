r"""Empirical (f, κ)-resilient averaging constant of a rule, by adversarial search.

RESAM's definition (Farhadkhani et al., ICML 2022): ``F`` is (f, κ)-resilient averaging if for all inputs
``x_1..x_n`` and every ``S ⊆ [n]`` with ``|S| = n - f``

.. math:: \|F(x_1, \dots, x_n) - \bar x_S\| \le \kappa \max_{i, j \in S} \|x_i - x_j\|.

The smallest such κ is ``κ*(F) = sup_x sup_S ‖F(x) - x̄_S‖ / diam(x_S)``. Any input gives a *lower* estimate
of ``κ*``; this module searches for bad inputs, so its value ``κ̂`` satisfies ``κ̂ ≤ κ*(F) ≤ κ_proven``.
The trivial lower bound of *every* rule under this (diameter) definition is ``f / (n - f)``: on the input
with ``n - f`` copies of ``0`` and ``f`` copies of ``e``, ``S`` = the zeros forces ``F = 0`` (its diameter
is 0), and then ``S'`` = (``f`` copies of ``e`` + ``n - 2f`` zeros) gives ``‖0 - f e/(n-f)‖ / ‖e‖``. (The
variance-based (f, κ)-robustness of Allouah et al., 2023, has the different lower bound ``f/(n-2f)``.)

Search. By permutation invariance, ``S`` is the first ``n - f`` rows. The honest rows are re-centred and
scaled to diameter 1 inside the objective (``x̄_S = 0``, ``diam = 1``: the ratio is then ``‖F(x)‖``; exact
for translation- and scale-equivariant rules, the estimate *at unit scale* for the others such as centred
clipping), and the ``f`` Byzantine rows are kept in the ball of radius ``radius`` around ``x̄_S``. Each
restart starts from one of several families (Gaussian honest points with Byzantine points far away, on one
side as in ALIE, or near an extreme honest point; two honest clusters; optionally the lower-bound input
above; optionally inputs given by the caller, e.g. a rule's known worst case), ascends with Adam through
torch autograd when the rule is differentiable, then refines with a (1+1) evolution strategy (which also
serves the rules that are not differentiable, e.g. the coordinate-wise ones). Both phases keep only
improvements, so ``κ̂`` is at least the ratio of every starting input. If scaling the best Byzantine
deviations by 10 still raises the ratio twofold, ``κ*`` is reported as unbounded (e.g. the plain mean with
``f > 0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..aggregators import build
from ..aggregators.base import Aggregator, check_float, check_int
from ..attacks.base import honest_std

__all__ = ["KappaEstimate", "empirical_kappa", "lower_bound", "kappa_table"]

FAMILIES = ("far", "alie", "extreme", "clusters", "random")


def lower_bound(n: int, f: int) -> float:
    """``f / (n - f)``: no rule has a smaller κ in RESAM's (diameter) definition."""
    return f / (n - f)


@dataclass
class KappaEstimate:
    """Result of :func:`empirical_kappa`."""

    rule: str
    n: int
    f: int
    d: int
    empirical: float
    proven: float | None
    lower: float
    unbounded: bool
    method: str
    evaluations: int
    worst_input: torch.Tensor = field(repr=False)
    per_family: dict[str, float] = field(default_factory=dict)


def _canonical(h: torch.Tensor, b: torch.Tensor, radius: float) -> torch.Tensor:
    """Honest rows centred, scaled to diameter 1; Byzantine rows (offset from the honest mean) in the ball."""
    mu = h.mean(0, keepdim=True)
    diam = torch.cdist(h, h).max().clamp_min(1e-12)
    hs = (h - mu) / diam
    bs = (b - mu) / diam
    norms = bs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    bs = bs * torch.clamp(radius / norms, max=1.0)
    return torch.cat([hs, bs])


def _ratio(rule: Aggregator, x: torch.Tensor) -> torch.Tensor:
    out = rule(x)
    return out.norm()


def _start(family: str, n: int, f: int, d: int, gen: torch.Generator, dtype: torch.dtype):
    m = n - f
    h = torch.randn(m, d, generator=gen, dtype=dtype)
    direction = torch.randn(d, generator=gen, dtype=dtype)
    direction = direction / direction.norm()
    if family == "far":
        b = h.mean(0) + 10.0 * direction + 0.1 * torch.randn(f, d, generator=gen, dtype=dtype)
    elif family == "alie":
        b = (h.mean(0) + 1.5 * honest_std(h) * direction.sign()).expand(f, d).clone()
    elif family == "extreme":
        far = (h - h.mean(0)).norm(dim=1).argmax()
        b = h[far].expand(f, d) + 0.3 * torch.randn(f, d, generator=gen, dtype=dtype)
    elif family == "clusters":
        k = int(torch.randint(1, max(m, 2), (1,), generator=gen))
        h[:k] += 3.0 * direction
        b = h[:1].expand(f, d) + 0.1 * torch.randn(f, d, generator=gen, dtype=dtype)
    elif family == "bound":
        h = torch.zeros(m, d, dtype=dtype)
        h[:f, 0] = 1.0
        b = torch.zeros(f, d, dtype=dtype)
    else:
        b = 3.0 * torch.randn(f, d, generator=gen, dtype=dtype)
    return h, b


def _adam(rule, h, b, radius, steps, lr, betas=(0.9, 0.999), eps=1e-8):
    """Gradient ascent on the ratio with Adam's update, written out (``torch.optim`` imports dynamo: slow).

    Stops at once (one evaluation) when the rule's output does not depend differentiably on its input.
    """
    params = [h.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    best, best_hb = -1.0, (h.detach().clone(), b.detach().clone())
    evals = 0
    for t in range(1, steps + 1):
        r = _ratio(rule, _canonical(params[0], params[1], radius))
        evals += 1
        if not torch.isfinite(r):
            break
        value = float(r.detach())
        if value > best:
            best, best_hb = value, (params[0].detach().clone(), params[1].detach().clone())
        if not r.requires_grad:
            break
        grads = torch.autograd.grad(r, params, allow_unused=True)
        with torch.no_grad():
            for p, g, (m1, m2) in zip(params, grads, moments, strict=True):
                if g is None:
                    continue
                m1.mul_(betas[0]).add_(g, alpha=1 - betas[0])
                m2.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                step = lr * (m1 / (1 - betas[0] ** t)) / ((m2 / (1 - betas[1] ** t)).sqrt() + eps)
                p.add_(step)  # ascent
    return best, best_hb, evals


def _evolve(rule, h, b, radius, steps, gen, sigma=0.3):
    """(1+1)-ES with the 1/5 success rule (derivative-free).

    Steps cycle through three moves: all rows, one row, and one row copied onto another (extremal inputs of
    piecewise-linear rules have coinciding points, which Gaussian steps alone reach slowly).
    """
    with torch.no_grad():
        best = float(_ratio(rule, _canonical(h, b, radius)))
        m = h.shape[0]
        rows = m + b.shape[0]
        for step in range(steps):
            scale = sigma * (1 + (h - h.mean(0)).norm(dim=1).max())
            dh = scale * torch.randn(h.shape, generator=gen, dtype=h.dtype)
            db = scale * torch.randn(b.shape, generator=gen, dtype=b.dtype)
            if step % 3:
                row = int(torch.randint(rows, (1,), generator=gen))
                keep_h = torch.zeros(m, 1, dtype=h.dtype)
                keep_b = torch.zeros(b.shape[0], 1, dtype=b.dtype)
                (keep_h if row < m else keep_b)[row if row < m else row - m] = 1.0
                if step % 3 == 2:  # copy another row onto this one (plus a little noise)
                    both = torch.cat([h, b])
                    src = both[int(torch.randint(rows, (1,), generator=gen))]
                    dh = (src - h) + 0.01 * dh
                    db = (src - b) + 0.01 * db
                dh, db = dh * keep_h, db * keep_b
            hn, bn = h + dh, b + db
            r = float(_ratio(rule, _canonical(hn, bn, radius)))
            if math.isfinite(r) and r > best:
                best, h, b = r, hn, bn
                sigma *= 1.5
            else:
                sigma *= 1.5**-0.25
            sigma = min(max(sigma, 1e-4), 3.0)
    return best, (h, b), steps + 1


def empirical_kappa(
    rule: str | Aggregator,
    n: int,
    f: int,
    d: int,
    *,
    restarts: int = 10,
    steps: int = 200,
    lr: float = 0.05,
    radius: float = 100.0,
    include_bound_input: bool = True,
    starts: Sequence[torch.Tensor] = (),
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> KappaEstimate:
    """Search inputs maximising ``‖F(x) - x̄_S‖ / diam(x_S)``; return the largest ratio found.

    Parameters
    ----------
    rule
        Rule spec (``"cwtm"``, ``"nnm+mda"``) or a built rule; built with ``f`` when a spec.
    n, f, d
        Number of inputs, of Byzantine inputs, dimension.
    restarts, steps
        Random restarts (cycling through the start families) and steps per phase (Adam, then the ES).
    radius
        Byzantine rows stay within ``radius`` honest diameters of the honest mean.
    include_bound_input
        Also start once from the input that proves the lower bound ``f/(n-f)`` (so ``κ̂ ≥ f/(n-f)`` for
        any rule); ``False`` measures what the search finds by itself.
    starts
        Extra starting inputs, each ``(n, d)`` with the honest set ``S`` in its first ``n - f`` rows (e.g.
        a constructed worst case of the rule). The search only keeps improvements, so
        ``κ̂ >= ‖F(x) - x̄_S‖ / diam(x_S)`` for each of them (up to rounding of the re-centring).
    """
    n = check_int("n", n, low=1)
    f = check_int("f", f, low=0, high=n - 1)
    d = check_int("d", d, low=1)
    restarts = check_int("restarts", restarts, low=1)
    steps = check_int("steps", steps, low=1)
    radius = check_float("radius", radius, low=0.0, low_open=True)
    agg = build(rule, f=f) if isinstance(rule, str) else rule
    agg.check(n, f)
    gen = torch.Generator().manual_seed(seed)
    given = []
    for k, x in enumerate(starts):
        x = torch.as_tensor(x, dtype=dtype)
        if x.shape != (n, d):
            raise ValueError(f"starts[{k}] has shape {tuple(x.shape)}, expected (n, d) = ({n}, {d})")
        given.append((x[: n - f].clone(), x[n - f :].clone()))
    families = (
        ["bound"] * (include_bound_input and f > 0)
        + ["given"] * len(given)
        + [FAMILIES[i % len(FAMILIES)] for i in range(restarts)]
    )
    best, best_x, evals, used_grad = -1.0, None, 0, False
    per_family: dict[str, float] = {}
    for family in families:
        h, b = given.pop(0) if family == "given" else _start(family, n, f, d, gen, dtype)
        if f == 0:
            b = b[:0]
        r1, (h1, b1), e1 = _adam(agg, h, b, radius, steps, lr)
        used_grad |= e1 > 1
        r2, (h2, b2), e2 = _evolve(agg, h1, b1, radius, steps, gen)
        evals += e1 + e2
        r = max(r1, r2)
        per_family[family] = max(per_family.get(family, -1.0), r)
        if r > best:
            best = r
            best_x = _canonical(h2, b2, radius).detach() if r2 >= r1 else _canonical(h1, b1, radius).detach()
    unbounded = False
    if f > 0 and best_x is not None and best > 0:
        with torch.no_grad():
            x = best_x.clone()
            x[n - f :] *= 10.0
            unbounded = float(_ratio(agg, x)) > 2.0 * best
    return KappaEstimate(
        rule=agg.spec,
        n=n,
        f=f,
        d=d,
        empirical=best,
        proven=agg.kappa(n, f, d),
        lower=lower_bound(n, f),
        unbounded=unbounded,
        method="autograd+es" if used_grad else "es",
        evaluations=evals,
        worst_input=best_x if best_x is not None else torch.empty(0),
        per_family=per_family,
    )


def kappa_table(estimates: list[KappaEstimate]) -> str:
    """Markdown table: rule, n, f, d, empirical κ̂, proven κ, lower bound f/(n-f)."""
    lines = [
        "| rule | n | f | d | empirical κ̂ (search) | proven κ | lower bound f/(n-f) | search |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in estimates:
        emp = f"≥ {e.empirical:.4g} (unbounded)" if e.unbounded else f"{e.empirical:.4g}"
        proven = "—" if e.proven is None else f"{e.proven:.4g}"
        lines.append(
            f"| {e.rule} | {e.n} | {e.f} | {e.d} | {emp} | {proven} | {e.lower:.4g} | "
            f"{e.method}, {e.evaluations} evals |"
        )
    return "\n".join(lines)


def describe(estimate: KappaEstimate) -> dict[str, Any]:
    """JSON-friendly view (without the worst input)."""
    return {k: v for k, v in estimate.__dict__.items() if k != "worst_input"}
