"""The κ estimator: between the trivial lower bound f/(n-f) and the proven κ, unbounded for the mean."""

from __future__ import annotations

import warnings

import pytest

from resam_flower.aggregators import build
from resam_flower.experiments.kappa import empirical_kappa, kappa_table, lower_bound

FAST = {"restarts": 5, "steps": 60, "seed": 0, "include_bound_input": False}


def estimate(rule, n, f, d, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return empirical_kappa(rule, n, f, d, **{**FAST, **kw})


@pytest.mark.parametrize(
    ("rule", "d", "above", "steps"),
    [
        ("cwtm", 1, 0.98, 100),  # tight in one dimension when n >= 3f: the proven κ equals f/(n-f)
        ("cwtm", 3, 0.9, 100),
        ("cwmed", 1, 1.3, 100),  # the median's ⌊n/2⌋/(n-f) = 0.6 is reachable: well above 0.4
        ("meamed", 1, 1.5, 100),
        ("mda", 2, 1.4, 60),  # MDA's 2f/(n-f) = 0.8
    ],
)
def test_estimate_between_lower_bound_and_proven_kappa(rule, d, above, steps):
    n, f = 7, 2
    e = estimate(rule, n, f, d, steps=steps)
    proven = build(rule, f=f).kappa(n, f, d)
    assert e.lower == pytest.approx(lower_bound(n, f)) == pytest.approx(0.4)
    assert e.proven == pytest.approx(proven)
    assert above * e.lower <= e.empirical <= proven * (1 + 1e-9)
    assert not e.unbounded and e.worst_input.shape == (n, d)


def test_the_search_can_fail_the_bound_check():
    # a rule that is not resilient averaging at all: its estimate exceeds any proven bound of the others
    e = estimate("mean", 7, 2, 2)
    assert e.unbounded and e.empirical > 10 * build("mda", f=2).kappa(7, 2, 2)
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
