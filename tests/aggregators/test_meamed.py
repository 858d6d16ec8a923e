"""Mean around median (meamed)."""

from __future__ import annotations

import itertools

import pytest
import torch

from resam_flower.aggregators import build
from resam_flower.aggregators.base import NonFiniteInputError
from resam_flower.aggregators.meamed import MeanAroundMedian

METHODS = ["network", "sort"]


def _definition(x: torch.Tensor, f: int) -> torch.Tensor:
    """Literal definition, column by column: the n - f values with the smallest (|v - M|, v)."""
    n, out = x.shape[0], []
    for col in x.T.tolist():
        s = sorted(col)
        med = s[n // 2] if n % 2 else 0.5 * s[n // 2 - 1] + 0.5 * s[n // 2]
        kept = sorted(col, key=lambda v, med=med: (abs(v - med), v))[: n - f]
        out.append(sum(kept) / (n - f))
    return torch.tensor(out, dtype=x.dtype)


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
    rule = MeanAroundMedian(f=1, method=method)
    # median 4; 1 and 7 tie at distance 3: the smaller value is kept -> mean(1, 4)
    assert torch.equal(rule(torch.tensor([[1.0], [4.0], [7.0]])), torch.tensor([2.5]))
    assert torch.equal(rule(torch.tensor([[7.0], [4.0], [1.0]])), torch.tensor([2.5]))
    # median 2: keep 0 and 2 (distances 2, 0) and drop 10
    assert torch.equal(rule(torch.tensor([[0.0], [2.0], [10.0]])), torch.tensor([1.0]))
    assert torch.equal(rule(torch.tensor([[-10.0], [2.0], [3.0]])), torch.tensor([2.5]))
    # even n: median 1.5; keep 1, 2 and the smaller of the tied 0 and 3
    assert torch.equal(rule(torch.tensor([[3.0], [0.0], [2.0], [1.0]])), torch.tensor([1.0]))
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [5.0, -9.0], [2.0, 1.0]])
    assert torch.equal(MeanAroundMedian(f=2, method=method)(x), torch.tensor([2 / 3, 1.0]))
    assert torch.equal(MeanAroundMedian(f=0, method=method)(x), x.mean(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,f", [(1, 0), (3, 1), (4, 1), (5, 0), (7, 3), (10, 2), (20, 4), (21, 5), (60, 12)])
def test_matches_the_literal_definition_with_ties(n, f, dtype):
    g = torch.Generator().manual_seed(n * 10 + f)
    x = torch.randint(-4, 5, (n, 120), generator=g).to(dtype) / 2  # many distance ties, exact sums
    ref = _definition(x, f)
    for method in METHODS:
        out = MeanAroundMedian(f=f, method=method)(x)
        assert out.dtype == dtype
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)
    y = torch.randn(n, 60, generator=g, dtype=dtype)
    for method in METHODS:
        torch.testing.assert_close(MeanAroundMedian(f=f, method=method)(y), _definition(y, f), **_tol(dtype))


def test_large_input_uses_network():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(20, 50_000, generator=g, dtype=torch.float64)
    ref = MeanAroundMedian(f=4, method="sort")(x)
    torch.testing.assert_close(MeanAroundMedian(f=4)(x), ref, **_tol(torch.float64))
    torch.testing.assert_close(ref[:50], _definition(x[:, :50], 4), **_tol(torch.float64))


@pytest.mark.parametrize("n,f", [(5, 2), (10, 2), (13, 3)])
def test_agrees_with_byzfl_without_ties(n, f):
    byzfl = pytest.importorskip("byzfl")
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 1000, generator=g, dtype=torch.float64)
    ours = MeanAroundMedian(f=f)(x)
    torch.testing.assert_close(ours, torch.from_numpy(byzfl.Meamed(f)(x.numpy())), rtol=1e-12, atol=1e-12)


def test_permutation_invariant_even_with_distance_ties():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-3, 4, (12, 500), generator=g).double()
    rule = MeanAroundMedian(f=3)
    out = rule(x)
    for _ in range(3):
        assert torch.equal(out, rule(x[torch.randperm(12, generator=g)]))


@pytest.mark.parametrize("value", [1e6, -1e6, float("inf"), float("-inf")])
def test_byzantine_rows_stay_inside_honest_box(value):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(7, 200, generator=g)
    x = torch.cat([h, torch.full((3, 200), value)])
    rule = MeanAroundMedian(f=3)
    out = rule(x)
    assert (out >= h.min(0).values).all() and (out <= h.max(0).values).all()
    assert rule.last_info["nonfinite_rows"] == (3 if abs(value) == float("inf") else 0)


def test_nonfinite_rows_are_dropped_up_to_f():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 40, generator=g, dtype=torch.float64)
    bad = x.clone()
    bad[2, 5] = float("nan")
    bad[6, 0] = float("inf")
    rule = MeanAroundMedian(f=2)
    out = rule(bad)
    assert rule.last_info["nonfinite_rows"] == 2
    torch.testing.assert_close(out, _definition(x[[0, 1, 3, 4, 5, 7, 8]], 0), **_tol(torch.float64))
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        rule(bad)


def test_too_few_inputs_raise_naming_n_and_f():
    with pytest.raises(ValueError, match=r"n > 2f.*f=2.*n=4"):
        MeanAroundMedian(f=2)(torch.zeros(4, 3))
    assert MeanAroundMedian(f=2).min_inputs() == 5
    with pytest.raises(ValueError, match="method"):
        MeanAroundMedian(f=1, method="heap")


def test_dtype_and_device_preserved(device):
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(7, 5000, dtype=dtype).to(device)
        ref = MeanAroundMedian(f=2, method="sort")(x.cpu())
        for method in METHODS:
            out = MeanAroundMedian(f=2, method=method)(x)
            assert out.dtype == dtype and out.device.type == device.type
            torch.testing.assert_close(out.cpu(), ref, **_tol(dtype))


def test_registry_and_spec():
    assert isinstance(build("meamed", f=1), MeanAroundMedian)
    assert build("meamed", f=1).spec == "meamed"


def test_kappa_values():
    rule = MeanAroundMedian(f=4)
    assert rule.kappa(20, 4, 1) == pytest.approx(8 / 16)
    assert rule.kappa(20, 4, 10**6) == pytest.approx(0.5 * 15**0.5)
    assert rule.kappa(9, 4, 1) == pytest.approx(8 / 5)
    assert rule.kappa(9, 0, 5) == 0.0  # f = 0 is the mean
    assert rule.kappa(8) is None


@pytest.mark.parametrize(
    "n,f,d", [(3, 1, 1), (5, 2, 1), (7, 3, 1), (7, 2, 1), (10, 3, 4), (11, 2, 30), (20, 4, 200), (9, 0, 3)]
)
def test_kappa_bound_random_and_adversarial(n, f, d):
    g = torch.Generator().manual_seed(n * 100 + f)
    rule = MeanAroundMedian(f=f)
    kappa = rule.kappa(n, f, d)
    worst = 0.0
    for scale in (1.0, 1e-3, 1e3):
        h = scale * torch.randn(n - f, d, generator=g, dtype=torch.float64)
        for byz in _byzantine_configs(h, f, g):
            worst = max(worst, _resilience_ratio(rule, h, byz))
    assert worst <= kappa * (1 + 1e-9) + 1e-12
    assert worst > 0.05 * kappa  # the adversarial inputs do push the rule


def test_kappa_bound_exhaustive_small_scalar_configurations():
    for n, f in [(3, 1), (5, 2), (6, 2), (7, 3)]:
        rule = MeanAroundMedian(f=f)
        kappa = rule.kappa(n, f, 1)
        for hv in itertools.combinations_with_replacement((0.0, 0.5, 1.0), n - f):
            if max(hv) == min(hv):
                continue
            h = torch.tensor(hv, dtype=torch.float64)[:, None]
            for bv in itertools.combinations_with_replacement((-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0), f):
                ratio = _resilience_ratio(rule, h, torch.tensor(bv, dtype=torch.float64)[:, None])
                assert ratio <= kappa * (1 + 1e-12)
