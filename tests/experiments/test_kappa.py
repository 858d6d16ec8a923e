"""The κ estimator: between the trivial lower bound f/(n-f) and the proven κ, unbounded for the mean.

Proven constants are written out here from their proofs (RESAM, Farhadkhani et al., ICML 2022, and the
rules' docstrings), not read from ``kappa()``; what the search must reach is the ratio of an input built
here whose value is known in closed form (the search keeps only improvements, so it cannot end below its
start): no threshold depends on the optimiser's trajectory, hence on the CPU's floating-point kernels.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from resam_flower.aggregators import build
from resam_flower.experiments.kappa import empirical_kappa, kappa_table, lower_bound

FAST = {"restarts": 5, "steps": 60, "seed": 0, "include_bound_input": False}


def estimate(rule, n, f, d, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return empirical_kappa(rule, n, f, d, **{**FAST, **kw})


def proven_kappa(rule: str, n: int, f: int, d: int) -> float:
    """Proven constants in RESAM's diameter definition, ``m = n - f``, for ``n > 2f``.

    Coordinate-wise rules: a per-coordinate constant ``c`` times ``sqrt(min(d, m - 1))`` (``Σ_k Δ_k² <=
    min(d, m - 1) D²``). ``c`` = ``f/m`` (trimmed mean: the lower bound of any rule, tight in 1-d),
    ``⌊(n-1)/2⌋/m`` (median), ``2f/m`` (mean around median). MDA: ``2f/m`` in any dimension.
    """
    m = n - f
    dim = math.sqrt(min(d, m - 1))
    per_coordinate = {"cwtm": f / m, "cwmed": ((n - 1) // 2) / m, "meamed": 2 * f / m}
    return 2 * f / m if rule == "mda" else per_coordinate[rule] * dim


def worst_case(rule: str, n: int, f: int, d: int, eps: float = 1e-3) -> tuple[torch.Tensor, float]:
    """An input (honest rows first) on a line, and its ratio ``‖F - x̄_S‖ / diam(S)`` in closed form.

    Honest values: ``a`` at 0 and ``m - a`` at 1 (``diam = 1``, ``x̄_S = (m - a)/m``); Byzantine values at
    ``b``. Trimmed mean (``a = f``, ``b = 2``): the kept middle values are all 1, ratio ``f/m``. Median
    (``a = ⌊(n-1)/2⌋``, ``b = 1``): the median is 1, ratio ``a/m``. Mean around median and MDA (``a = f``,
    ``b = 2 - eps``): the ``m`` values closest to the median 1 (the ``m`` with the smallest diameter
    ``1 - eps``) are the ``m - f`` ones and the ``f`` Byzantine ones, mean ``1 + f (1 - eps)/m``, ratio
    ``f (2 - eps)/m``.
    """
    m = n - f
    a, b = {"cwtm": (f, 2.0), "cwmed": ((n - 1) // 2, 1.0)}.get(rule, (f, 2.0 - eps))
    line = torch.tensor([0.0] * a + [1.0] * (m - a) + [b] * f, dtype=torch.float64)
    x = torch.zeros(n, d, dtype=torch.float64)
    x[:, 0] = line
    ratio = {"cwtm": f / m, "cwmed": a / m}.get(rule, f * (2.0 - eps) / m)
    return x, ratio


@pytest.mark.parametrize(
    ("rule", "d"),
    [("cwtm", 1), ("cwtm", 3), ("cwmed", 1), ("cwmed", 2), ("meamed", 1), ("mda", 1), ("mda", 2)],
)
def test_estimate_between_a_constructed_worst_case_and_the_proven_kappa(rule, d):
    n, f = 7, 2
    x, ratio = worst_case(rule, n, f, d)
    e = estimate(rule, n, f, d, starts=[x])
    proven = proven_kappa(rule, n, f, d)
    assert e.lower == pytest.approx(lower_bound(n, f)) == pytest.approx(f / (n - f)) == pytest.approx(0.4)
    assert e.proven == pytest.approx(proven)  # kappa() states the proven constant
    assert ratio - 1e-9 <= e.empirical <= proven * (1 + 1e-9)
    assert e.per_family["given"] >= ratio - 1e-9
    assert not e.unbounded and e.worst_input.shape == (n, d)
    if d == 1:  # the constructed input attains (cwtm, cwmed) or approaches (meamed, mda: eps) the proven κ
        assert ratio >= proven * (1 - 1e-3)


def test_constructed_worst_cases_are_what_the_rules_compute():
    """The closed-form ratios above, checked once directly on the rules' outputs."""
    n, f = 7, 2
    for rule in ("cwtm", "cwmed", "meamed", "mda"):
        x, ratio = worst_case(rule, n, f, 1)
        h = x[: n - f]
        out = build(rule, f=f)(x)
        assert float((out - h.mean(0)).norm() / torch.cdist(h, h).max()) == pytest.approx(ratio)


def test_starts_are_validated():
    with pytest.raises(ValueError, match=r"starts\[0\] has shape \(3, 2\)"):
        empirical_kappa("cwtm", 7, 2, 2, starts=[torch.zeros(3, 2)])


def test_the_search_can_fail_the_bound_check():
    # a rule that is not resilient averaging at all: its estimate exceeds any proven bound of the others
    e = estimate("mean", 7, 2, 2)
    assert e.unbounded and e.empirical > 10 * proven_kappa("mda", 7, 2, 2)
    assert e.proven is None and e.method == "autograd+es"


def test_mean_without_byzantine_is_exact():
    e = estimate("mean", 5, 0, 3)
    assert e.empirical == pytest.approx(0.0, abs=1e-12) and e.proven == 0.0 and not e.unbounded


def test_bound_input_guarantees_the_lower_bound():
    # seeded with the input that proves f/(n-f), even a short search of any rule reaches it
    for rule in ("krum", "cwtm", "nnm+cwtm"):
        e = estimate(rule, 7, 2, 2, restarts=1, steps=5, include_bound_input=True)
        assert e.empirical >= e.lower - 1e-12
        assert "bound" in e.per_family


def test_estimates_are_deterministic_and_validated():
    a, b = estimate("cwmed", 7, 2, 2), estimate("cwmed", 7, 2, 2)
    assert a.empirical == b.empirical
    with pytest.raises(ValueError, match="f must be <= 6"):
        empirical_kappa("cwtm", 7, 7, 2)
    with pytest.raises(ValueError, match="n > 2f|at least"):
        empirical_kappa("cwtm", 5, 3, 2)
    with pytest.raises(ValueError, match="radius"):
        empirical_kappa("cwtm", 7, 2, 2, radius=0)


def test_table_rows():
    rows = kappa_table([estimate("mda", 7, 2, 1, restarts=1, steps=5), estimate("mean", 7, 2, 1, restarts=1)])
    lines = rows.splitlines()
    assert lines[0].startswith("| rule | n | f | d |") and len(lines) == 4
    assert lines[2].startswith("| mda | 7 | 2 | 1 |") and "| 0.8 | 0.4 |" in lines[2]
    assert "(unbounded)" in lines[3] and "| — |" in lines[3]
