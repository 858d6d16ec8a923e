"""Coordinate-wise median (cwmed)."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import build
from resam_flower.aggregators.base import NonFiniteInputError
from resam_flower.aggregators.median import CoordinateWiseMedian

METHODS = ["network", "sort"]


def _reference(x: torch.Tensor) -> torch.Tensor:
    s, n = x.sort(dim=0).values, x.shape[0]
    return s[n // 2] if n % 2 else 0.5 * s[n // 2 - 1] + 0.5 * s[n // 2]


def _byzantine_configs(h: torch.Tensor, f: int, g: torch.Generator):
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


def _resilience_ratio(rule, h: torch.Tensor, byz: torch.Tensor) -> float:
    out = rule(torch.cat([byz, h]))
    return float((out - h.mean(0)).norm() / torch.cdist(h, h).max())


@pytest.mark.parametrize("method", METHODS)
def test_hand_worked_examples(method):
    rule = CoordinateWiseMedian(f=1, method=method)
    x = torch.tensor([[1.0, 9.0], [5.0, -1.0], [3.0, 2.0]])
    assert torch.equal(rule(x), torch.tensor([3.0, 2.0]))
    x = torch.tensor([[1.0], [2.0], [3.0], [10.0]])  # even n: mean of the two middle values
    assert torch.equal(rule(x), torch.tensor([2.5]))
    x = torch.tensor([[4.0], [4.0], [1.0], [7.0], [4.0]])  # ties
    assert torch.equal(rule(x), torch.tensor([4.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 6, 9, 20, 21, 60])
def test_equals_sort_reference_bitwise(n, dtype):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 300, generator=g, dtype=dtype)
    x[:, ::2] = torch.randint(-2, 3, (n, 150), generator=g).to(dtype)  # ties in half the columns
    ref = _reference(x)
    for method in METHODS:
        out = CoordinateWiseMedian(f=0, method=method)(x)
        assert out.dtype == dtype
        assert torch.equal(out, ref)


def test_large_input_uses_network_and_is_exact():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(20, 50_000, generator=g)
    assert torch.equal(CoordinateWiseMedian(f=4)(x), _reference(x))


@pytest.mark.parametrize("n", [5, 10, 13])
def test_agrees_with_byzfl(n):
    byzfl = pytest.importorskip("byzfl")
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 1000, generator=g, dtype=torch.float64)
    ours = CoordinateWiseMedian(f=(n - 1) // 2)(x)
    torch.testing.assert_close(ours, torch.from_numpy(byzfl.Median()(x.numpy())), rtol=1e-12, atol=1e-12)


def test_permutation_invariant():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 500, generator=g)
    rule = CoordinateWiseMedian(f=3)
    assert torch.equal(rule(x), rule(x[torch.randperm(12, generator=g)]))


@pytest.mark.parametrize("value", [1e6, -1e6, float("inf"), float("-inf")])
def test_byzantine_rows_stay_inside_honest_box(value):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(7, 200, generator=g)
    x = torch.cat([h, torch.full((3, 200), value)])
    rule = CoordinateWiseMedian(f=3)
    out = rule(x)
    assert (out >= h.min(0).values).all() and (out <= h.max(0).values).all()
    assert rule.last_info["nonfinite_rows"] == (3 if abs(value) == float("inf") else 0)


def test_nonfinite_rows_are_dropped_up_to_f():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 40, generator=g)
    bad = x.clone()
    bad[2, 5] = float("nan")
    bad[6, 0] = float("inf")
    rule = CoordinateWiseMedian(f=2)
    out = rule(bad)
    assert rule.last_info["nonfinite_rows"] == 2
    assert torch.equal(out, _reference(x[[0, 1, 3, 4, 5, 7, 8]]))
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        rule(bad)


def test_too_few_inputs_raise_naming_n_and_f():
    with pytest.raises(ValueError, match=r"n > 2f.*f=2.*n=4"):
        CoordinateWiseMedian(f=2)(torch.zeros(4, 3))
    assert CoordinateWiseMedian(f=2).min_inputs() == 5
    with pytest.raises(ValueError, match="method"):
        CoordinateWiseMedian(f=1, method="heap")


def test_dtype_and_device_preserved(device):
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(5, 5000, dtype=dtype).to(device)
        for method in METHODS:
            out = CoordinateWiseMedian(f=2, method=method)(x)
            assert out.dtype == dtype and out.device.type == device.type
            assert torch.equal(out.cpu(), _reference(x.cpu()))


def test_registry_and_spec():
    assert isinstance(build("cwmed", f=1), CoordinateWiseMedian)
    assert isinstance(build("median", f=1), CoordinateWiseMedian)
    assert build("cwmed", f=1).spec == "cwmed"
    assert build("cwmed(method='sort')", f=1).spec == "cwmed(method='sort')"


def test_kappa_values():
    rule = CoordinateWiseMedian(f=4)
    assert rule.kappa(20, 4, 1) == pytest.approx(9 / 16)
    assert rule.kappa(20, 4, 10**6) == pytest.approx(9 / 16 * 15**0.5)
    assert rule.kappa(21, 4, 1) == pytest.approx(10 / 17)
    assert rule.kappa(2, 0, 7) == 0.0  # the median of two values is their mean
    assert rule.kappa(20) == rule.kappa(20, 4, None) == rule.kappa(20, 4, 15)
    assert rule.kappa(8) is None  # n <= 2f: no guarantee


@pytest.mark.parametrize(
    "n,f,d", [(3, 1, 1), (5, 2, 1), (7, 2, 1), (10, 3, 4), (11, 2, 30), (20, 4, 200), (9, 0, 3)]
)
def test_kappa_bound_random_and_adversarial(n, f, d):
    g = torch.Generator().manual_seed(n * 100 + f)
    rule = CoordinateWiseMedian(f=f)
    kappa = rule.kappa(n, f, d)
    worst = 0.0
    for scale in (1.0, 1e-3, 1e3):
        h = scale * torch.randn(n - f, d, generator=g, dtype=torch.float64)
        for byz in _byzantine_configs(h, f, g):
            worst = max(worst, _resilience_ratio(rule, h, byz))
    assert worst <= kappa * (1 + 1e-9)
    assert worst > 0.05 * kappa  # the adversarial inputs do push the rule


def test_kappa_bound_two_point_honest_sets():
    # Honest values at 0 or 1 per coordinate, Byzantine at +-1e3: the extreme scalar configurations.
    for n, f in [(5, 2), (9, 4), (10, 2), (20, 4)]:
        rule = CoordinateWiseMedian(f=f)
        for d in (1, 6):
            kappa = rule.kappa(n, f, d)
            for a in range(n - f + 1):
                h = (torch.arange(n - f)[:, None] >= a).double().expand(-1, d).clone()
                h[0, 0], h[-1, 0] = 0.0, 1.0  # diameter > 0
                for byz_value in (1e3, -1e3, 1.0, 0.0):
                    ratio = _resilience_ratio(rule, h, torch.full((f, d), byz_value, dtype=torch.float64))
                    assert ratio <= kappa * (1 + 1e-9)


@pytest.mark.parametrize("n,f", [(3, 1), (6, 1), (7, 2), (10, 4), (20, 4), (21, 10)])
def test_kappa_is_attained_in_one_dimension(n, f):
    # floor((n-1)/2) honest values at 0, the others at 1, Byzantine above: M = 1.
    rule = CoordinateWiseMedian(f=f)
    a = (n - 1) // 2
    h = torch.cat([torch.zeros(a, 1), torch.ones(n - f - a, 1)]).double()
    ratio = _resilience_ratio(rule, h, torch.full((f, 1), 1e3, dtype=torch.float64))
    assert ratio == pytest.approx(rule.kappa(n, f, 1))
