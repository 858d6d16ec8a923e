"""Mean around median (meamed): formula and constants (shared checks: test_coordinatewise_rules.py)."""

from __future__ import annotations

import pytest
import torch

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


def test_kappa_values():
    rule = MeanAroundMedian(f=4)
    assert rule.kappa(20, 4, 1) == pytest.approx(8 / 16)
    assert rule.kappa(20, 4, 10**6) == pytest.approx(0.5 * 15**0.5)
    assert rule.kappa(9, 4, 1) == pytest.approx(8 / 5)
    assert rule.kappa(9, 0, 5) == 0.0  # f = 0 is the mean
    assert rule.kappa(8) is None
