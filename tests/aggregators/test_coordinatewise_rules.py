"""Checks shared by the coordinate-wise rules: cwmed, cwtm and meamed, parametrised over the three.

Each rule's own formula (hand-worked values, the sort reference, its κ constant) stays in test_median.py,
test_trimmed_mean.py and test_meamed.py. Here: registry names, ByzFL parity, permutation invariance,
Byzantine and non-finite rows, the input condition, dtype/device, and the proven κ bound against
adversarial inputs (random, two-point and exhaustive small scalar configurations).
"""

from __future__ import annotations

import itertools

import byzfl
import pytest
import torch

from resam_flower.aggregators import build
from resam_flower.aggregators.base import NonFiniteInputError
from resam_flower.aggregators.meamed import MeanAroundMedian
from resam_flower.aggregators.median import CoordinateWiseMedian
from resam_flower.aggregators.trimmed_mean import CoordinateWiseTrimmedMean

RULES = [CoordinateWiseMedian, CoordinateWiseTrimmedMean, MeanAroundMedian]
METHODS = ["network", "sort"]
KAPPA_CASES = [(3, 1, 1), (5, 2, 1), (7, 3, 1), (7, 2, 1), (10, 3, 4), (11, 2, 30), (20, 4, 200), (9, 0, 3)]


def _median(x: torch.Tensor) -> torch.Tensor:
    s, n = x.sort(dim=0).values, x.shape[0]
    return s[n // 2] if n % 2 else 0.5 * s[n // 2 - 1] + 0.5 * s[n // 2]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return dict(rtol=2e-6, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


def _assert_same(cls: type, out: torch.Tensor, ref: torch.Tensor) -> None:
    """The median picks (or halves two) input values: bitwise. The means sum in some order: close."""
    if cls is CoordinateWiseMedian:
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref, **_tol(ref.dtype))


def byzantine_configs(h: torch.Tensor, f: int, g: torch.Generator):
    """Byzantine rows ``(f, d)`` placed to push every coordinate: far out, on the honest extremes, mixed."""
    lo, hi = h.min(0).values, h.max(0).values
    span = (hi - lo).max() + 1
    side = torch.where(torch.rand(h.shape[1], generator=g) < 0.5, hi + 10 * span, lo - 10 * span)
    yield (hi + 1e3 * span).expand(f, -1)
    yield (lo - 1e3 * span).expand(f, -1)
    yield hi.expand(f, -1)
    yield side.expand(f, -1)
    yield torch.stack([hi + span if i % 2 else lo - span for i in range(f)]) if f else h[:0]
    for _ in range(20):  # per coordinate, each Byzantine value picked among honest values and extremes
        cand = torch.cat([h, (lo - span)[None], (hi + span)[None], lo[None], hi[None]])
        pick = torch.randint(0, cand.shape[0], (f, h.shape[1]), generator=g)
        yield cand.gather(0, pick)


def resilience_ratio(rule, h: torch.Tensor, byz: torch.Tensor) -> float:
    """``||F(byz, h) - mean(h)|| / diameter(h)``: what κ bounds."""
    out = rule(torch.cat([byz, h]))
    return float((out - h.mean(0)).norm() / torch.cdist(h, h).max())


# -- registry, parity, invariance ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("cwmed", CoordinateWiseMedian),
        ("median", CoordinateWiseMedian),
        ("cwtm", CoordinateWiseTrimmedMean),
        ("trmean", CoordinateWiseTrimmedMean),
        ("meamed", MeanAroundMedian),
    ],
)
def test_registry_names(name, cls):
    assert isinstance(build(name, f=1), cls)


@pytest.mark.parametrize("name", ["cwmed", "cwtm", "meamed"])
@pytest.mark.parametrize("method", [None, "sort", "network"])
def test_spec_rebuilds_the_rule(name, method):
    spec = name if method is None else f"{name}(method={method!r})"
    for f in (1, 2):
        assert build(spec, f=f).spec == spec


_BYZFL = {
    CoordinateWiseMedian: lambda byzfl, f: byzfl.Median(),
    CoordinateWiseTrimmedMean: lambda byzfl, f: byzfl.TrMean(f),
    MeanAroundMedian: lambda byzfl, f: byzfl.Meamed(f),
}


@pytest.mark.parametrize("cls", RULES)
@pytest.mark.parametrize(("n", "f"), [(5, 2), (10, 2), (10, 4), (13, 3), (13, 6)])
def test_agrees_with_byzfl_without_ties(cls, n, f):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 1000, generator=g, dtype=torch.float64)
    theirs = torch.from_numpy(_BYZFL[cls](byzfl, f)(x.numpy()))
    torch.testing.assert_close(cls(f=f)(x), theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", RULES)
def test_permutation_invariant_even_with_ties(cls):
    g = torch.Generator().manual_seed(1)
    rule = cls(f=3)
    for high in (4, 50):  # small integers: many value and distance ties, exact sums
        x = torch.randint(-high + 1, high, (12, 500), generator=g).double()
        out = rule(x)
        for _ in range(3):
            assert torch.equal(out, rule(x[torch.randperm(12, generator=g)]))
    y = torch.randn(12, 500, generator=g)
    _assert_same(cls, rule(y[torch.randperm(12, generator=g)]), rule(y))


# -- Byzantine and non-finite rows, input condition ------------------------------------------------
@pytest.mark.parametrize("cls", RULES)
@pytest.mark.parametrize("value", [1e6, -1e6, float("inf"), float("-inf")])
def test_byzantine_rows_stay_inside_honest_box(cls, value):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(7, 200, generator=g)
    x = torch.cat([h, torch.full((3, 200), value)])
    rule = cls(f=3)
    out = rule(x)
    assert (out >= h.min(0).values).all() and (out <= h.max(0).values).all()
    assert rule.last_info["nonfinite_rows"] == (3 if abs(value) == float("inf") else 0)


@pytest.mark.parametrize("cls", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inf", [float("inf"), float("-inf")])
def test_nonfinite_rows_are_dropped_up_to_f(cls, dtype, inf):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 40, generator=g, dtype=dtype)
    bad = x.clone()
    bad[2, 5] = float("nan")
    bad[6, 0] = inf
    rule = cls(f=2)
    out = rule(bad)
    assert rule.last_info["nonfinite_rows"] == 2
    kept = x[[0, 1, 3, 4, 5, 7, 8]]  # f drops to 0: the median of the rest, or their mean
    _assert_same(cls, out, _median(kept) if cls is CoordinateWiseMedian else kept.mean(0))
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        rule(bad)


@pytest.mark.parametrize("cls", RULES)
def test_too_few_inputs_raise_naming_n_and_f(cls):
    with pytest.raises(ValueError, match=r"n > 2f.*f=2.*n=4"):
        cls(f=2)(torch.zeros(4, 3))
    assert cls(f=2).min_inputs() == 5
    with pytest.raises(ValueError, match="method"):
        cls(f=1, method="heap")
    with pytest.raises(ValueError, match="f must be >= 0, got -1"):
        cls(f=-1)


@pytest.mark.parametrize("cls", RULES)
def test_dtype_and_device_preserved(cls, device):
    g = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        for n in (5, 7):
            x = torch.randn(n, 5000, generator=g, dtype=dtype)
            ref = cls(f=2, method="sort")(x)
            if cls is CoordinateWiseMedian:
                assert torch.equal(ref, _median(x))
            for method in METHODS:
                out = cls(f=2, method=method)(x.to(device))
                assert out.dtype == dtype and out.device.type == device.type
                _assert_same(cls, out.cpu(), ref)


# -- the κ bound -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", RULES)
@pytest.mark.parametrize(("n", "f", "d"), KAPPA_CASES)
def test_kappa_bound_random_and_adversarial(cls, n, f, d):
    g = torch.Generator().manual_seed(n * 100 + f)
    rule = cls(f=f)
    kappa = rule.kappa(n, f, d)
    worst = 0.0
    for scale in (1.0, 1e-3, 1e3):
        h = scale * torch.randn(n - f, d, generator=g, dtype=torch.float64)
        for byz in byzantine_configs(h, f, g):
            worst = max(worst, resilience_ratio(rule, h, byz))
    assert worst <= kappa * (1 + 1e-9) + 1e-12
    if kappa:  # 0 only where the rule is the mean (cwtm, meamed with f = 0)
        assert worst > 0.05 * kappa  # the adversarial inputs do push the rule


@pytest.mark.parametrize("cls", RULES)
def test_kappa_bound_two_point_honest_sets(cls):
    # Honest values at 0 or 1 per coordinate, Byzantine at +-1e3: the extreme scalar configurations.
    for n, f in [(5, 2), (9, 4), (10, 2), (20, 4)]:
        rule = cls(f=f)
        for d in (1, 6):
            kappa = rule.kappa(n, f, d)
            for a in range(n - f + 1):
                h = (torch.arange(n - f)[:, None] >= a).double().expand(-1, d).clone()
                h[0, 0], h[-1, 0] = 0.0, 1.0  # diameter > 0
                for byz_value in (1e3, -1e3, 1.0, 0.0):
                    ratio = resilience_ratio(rule, h, torch.full((f, d), byz_value, dtype=torch.float64))
                    assert ratio <= kappa * (1 + 1e-9)


@pytest.mark.parametrize("cls", RULES)
def test_kappa_bound_exhaustive_small_scalar_configurations(cls):
    # Every honest multiset on the grid {0, 1/2, 1} and Byzantine values on a wider grid.
    for n, f in [(3, 1), (5, 2), (6, 2), (7, 3)]:
        rule = cls(f=f)
        kappa = rule.kappa(n, f, 1)
        for hv in itertools.combinations_with_replacement((0.0, 0.5, 1.0), n - f):
            if max(hv) == min(hv):
                continue
            h = torch.tensor(hv, dtype=torch.float64)[:, None]
            for bv in itertools.combinations_with_replacement((-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0), f):
                ratio = resilience_ratio(rule, h, torch.tensor(bv, dtype=torch.float64)[:, None])
                assert ratio <= kappa * (1 + 1e-12)


@pytest.mark.parametrize(
    ("cls", "n", "f"),
    [(CoordinateWiseMedian, n, f) for n, f in [(3, 1), (6, 1), (7, 2), (10, 4), (20, 4), (21, 10)]]
    + [
        (CoordinateWiseTrimmedMean, n, f)
        for n, f in [(3, 1), (7, 2), (10, 3), (20, 4), (13, 4), (7, 3), (11, 5)]
    ],
)
def test_kappa_is_attained_in_one_dimension(cls, n, f):
    # Honest values at 0 (floor((n-1)/2) of them for the median, f for the trimmed mean), the others at 1,
    # Byzantine far above: the rule lands as far from the honest mean as κ allows (diameter 1).
    zeros = (n - 1) // 2 if cls is CoordinateWiseMedian else f
    rule = cls(f=f)
    h = torch.cat([torch.zeros(zeros, 1), torch.ones(n - f - zeros, 1)]).double()
    ratio = resilience_ratio(rule, h, torch.full((f, 1), 1e3, dtype=torch.float64))
    assert ratio == pytest.approx(rule.kappa(n, f, 1))
