"""Coordinate-wise trimmed mean (cwtm): formula, constants (shared checks: test_coordinatewise_rules.py)."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators.trimmed_mean import CoordinateWiseTrimmedMean, trimmed_mean_constant

METHODS = ["network", "sort"]


def _reference(x: torch.Tensor, f: int) -> torch.Tensor:
    return x.sort(dim=0).values[f : x.shape[0] - f].mean(0)


def _tol(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


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
    for n, f in [(3, 1), (7, 2), (10, 3), (20, 4), (13, 4), (7, 3), (11, 5)]:  # attained in one dimension
        assert CoordinateWiseTrimmedMean(f=f).kappa(n, f, 1) == pytest.approx(f / (n - f))
