"""Coordinate-wise trimmed mean (cwtm)."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import build
from resam_flower.aggregators.base import NonFiniteInputError
from resam_flower.aggregators.trimmed_mean import CoordinateWiseTrimmedMean, trimmed_mean_constant

METHODS = ["network", "sort"]


def _reference(x: torch.Tensor, f: int) -> torch.Tensor:
    return x.sort(dim=0).values[f : x.shape[0] - f].mean(0)


def _tol(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


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
    x = torch.tensor([[1.0, 0.0], [2.0, -50.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]])
    assert torch.equal(CoordinateWiseTrimmedMean(f=1, method=method)(x), torch.tensor([3.0, 1.0]))
    assert torch.equal(CoordinateWiseTrimmedMean(f=2, method=method)(x), torch.tensor([3.0, 1.0]))
    ties = torch.tensor([[5.0], [5.0], [1.0], [5.0], [9.0], [9.0]])  # sorted 1 5 5 5 9 9
    assert torch.equal(CoordinateWiseTrimmedMean(f=1, method=method)(ties), torch.tensor([6.0]))
    assert torch.equal(CoordinateWiseTrimmedMean(f=0, method=method)(ties), ties.mean(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n,f", [(1, 0), (3, 1), (4, 0), (7, 3), (10, 2), (20, 4), (21, 5), (60, 12), (60, 29)]
)
def test_equals_sort_reference(n, f, dtype):
    g = torch.Generator().manual_seed(n * 10 + f)
    x = torch.randn(n, 300, generator=g, dtype=dtype)
    x[:, ::2] = torch.randint(-2, 3, (n, 150), generator=g).to(dtype)  # ties in half the columns
    ref = _reference(x, f)
    for method in METHODS:
        out = CoordinateWiseTrimmedMean(f=f, method=method)(x)
        assert out.dtype == dtype
        torch.testing.assert_close(out, ref, **_tol(dtype))
        assert torch.equal(out[::2], ref[::2])  # small integers: every sum is exact


def test_large_input_uses_network():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(20, 50_000, generator=g)
    torch.testing.assert_close(CoordinateWiseTrimmedMean(f=4)(x), _reference(x, 4), **_tol(torch.float32))


@pytest.mark.parametrize("n,f", [(5, 2), (10, 2), (13, 3)])
def test_agrees_with_byzfl(n, f):
    byzfl = pytest.importorskip("byzfl")
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 1000, generator=g, dtype=torch.float64)
    ours = CoordinateWiseTrimmedMean(f=f)(x)
    torch.testing.assert_close(ours, torch.from_numpy(byzfl.TrMean(f)(x.numpy())), rtol=1e-12, atol=1e-12)


def test_permutation_invariant():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-50, 50, (12, 500), generator=g).double()
    rule = CoordinateWiseTrimmedMean(f=3)
    assert torch.equal(rule(x), rule(x[torch.randperm(12, generator=g)]))
    y = torch.randn(12, 500, generator=g)
    torch.testing.assert_close(rule(y), rule(y[torch.randperm(12, generator=g)]), **_tol(torch.float32))


@pytest.mark.parametrize("value", [1e6, -1e6, float("inf"), float("-inf")])
def test_byzantine_rows_stay_inside_honest_box(value):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(7, 200, generator=g)
    x = torch.cat([h, torch.full((3, 200), value)])
    rule = CoordinateWiseTrimmedMean(f=3)
    out = rule(x)
    assert (out >= h.min(0).values).all() and (out <= h.max(0).values).all()
    assert rule.last_info["nonfinite_rows"] == (3 if abs(value) == float("inf") else 0)


def test_nonfinite_rows_are_dropped_up_to_f():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 40, generator=g, dtype=torch.float64)
    bad = x.clone()
    bad[2, 5] = float("nan")
    bad[6, 0] = float("-inf")
    rule = CoordinateWiseTrimmedMean(f=2)
    out = rule(bad)
    assert rule.last_info["nonfinite_rows"] == 2
    torch.testing.assert_close(out, _reference(x[[0, 1, 3, 4, 5, 7, 8]], 0), **_tol(torch.float64))
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        rule(bad)


def test_too_few_inputs_raise_naming_n_and_f():
    with pytest.raises(ValueError, match=r"n > 2f.*f=2.*n=4"):
        CoordinateWiseTrimmedMean(f=2)(torch.zeros(4, 3))
    assert CoordinateWiseTrimmedMean(f=2).min_inputs() == 5
    with pytest.raises(ValueError, match="method"):
        CoordinateWiseTrimmedMean(f=1, method="heap")
    with pytest.raises(ValueError, match="f"):
        CoordinateWiseTrimmedMean(f=-1)


def test_dtype_and_device_preserved(device):
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(7, 5000, dtype=dtype).to(device)
        for method in METHODS:
            out = CoordinateWiseTrimmedMean(f=2, method=method)(x)
            assert out.dtype == dtype and out.device.type == device.type
            torch.testing.assert_close(out.cpu(), _reference(x.cpu(), 2), **_tol(dtype))


def test_registry_and_spec():
    assert isinstance(build("cwtm", f=1), CoordinateWiseTrimmedMean)
    assert isinstance(build("trmean", f=1), CoordinateWiseTrimmedMean)
    assert build("cwtm(method='network')", f=2).spec == "cwtm(method='network')"


def test_kappa_values():
    assert trimmed_mean_constant(20, 4) == pytest.approx(4 / 16)
    assert trimmed_mean_constant(7, 3) == pytest.approx(3 / 4)
    assert trimmed_mean_constant(9, 0) == 0.0
    rule = CoordinateWiseTrimmedMean(f=4)
    assert rule.kappa(20, 4, 1) == pytest.approx(0.25)
    assert rule.kappa(20, 4, 10**6) == pytest.approx(0.25 * 15**0.5)
    assert rule.kappa(20) == rule.kappa(20, 4, 10**6)
    assert rule.kappa(8) is None
    assert rule.kappa(9, 0, 100) == 0.0  # f = 0 is the mean


@pytest.mark.parametrize(
    "n,f,d", [(3, 1, 1), (5, 2, 1), (7, 3, 1), (7, 2, 1), (10, 3, 4), (11, 2, 30), (20, 4, 200), (9, 0, 3)]
)
def test_kappa_bound_random_and_adversarial(n, f, d):
    g = torch.Generator().manual_seed(n * 100 + f)
    rule = CoordinateWiseTrimmedMean(f=f)
    kappa = rule.kappa(n, f, d)
    worst = 0.0
    for scale in (1.0, 1e-3, 1e3):
        h = scale * torch.randn(n - f, d, generator=g, dtype=torch.float64)
        for byz in _byzantine_configs(h, f, g):
            worst = max(worst, _resilience_ratio(rule, h, byz))
    assert worst <= kappa * (1 + 1e-9) + 1e-12
    if f:
        assert worst > 0.05 * kappa  # the adversarial inputs do push the rule


@pytest.mark.parametrize("n,f", [(3, 1), (7, 2), (10, 3), (20, 4), (13, 4), (7, 3), (11, 5)])
def test_kappa_is_attained_in_one_dimension(n, f):
    # f honest values at 0, n - 2f at 1, Byzantine above: |T - mean| = f/(n-f) exactly.
    rule = CoordinateWiseTrimmedMean(f=f)
    h = torch.cat([torch.zeros(f, 1), torch.ones(n - 2 * f, 1)]).double()
    ratio = _resilience_ratio(rule, h, torch.full((f, 1), 1e3, dtype=torch.float64))
    assert ratio == pytest.approx(rule.kappa(n, f, 1)) == pytest.approx(f / (n - f))


def test_kappa_bound_exhaustive_small_scalar_configurations():
    # Every honest multiset on the grid {0, 1/2, 1} and Byzantine values on {-1, 0, 1/2, 1, 2}.
    import itertools

    for n, f in [(3, 1), (5, 2), (6, 2), (7, 3)]:
        rule = CoordinateWiseTrimmedMean(f=f)
        kappa = rule.kappa(n, f, 1)
        for hv in itertools.combinations_with_replacement((0.0, 0.5, 1.0), n - f):
            if max(hv) == min(hv):
                continue
            h = torch.tensor(hv, dtype=torch.float64)[:, None]
            for bv in itertools.combinations_with_replacement((-1.0, 0.0, 0.5, 1.0, 2.0), f):
                ratio = _resilience_ratio(rule, h, torch.tensor(bv, dtype=torch.float64)[:, None])
                assert ratio <= kappa * (1 + 1e-12)
