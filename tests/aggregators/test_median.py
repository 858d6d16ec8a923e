"""Coordinate-wise median (cwmed): formula and constants (shared checks: test_coordinatewise_rules.py)."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators.median import CoordinateWiseMedian

METHODS = ["network", "sort"]


def _reference(x: torch.Tensor) -> torch.Tensor:
    s, n = x.sort(dim=0).values, x.shape[0]
    return s[n // 2] if n % 2 else 0.5 * s[n // 2 - 1] + 0.5 * s[n // 2]


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


def test_kappa_values():
    rule = CoordinateWiseMedian(f=4)
    assert rule.kappa(20, 4, 1) == pytest.approx(9 / 16)
    assert rule.kappa(20, 4, 10**6) == pytest.approx(9 / 16 * 15**0.5)
    assert rule.kappa(21, 4, 1) == pytest.approx(10 / 17)
    assert rule.kappa(2, 0, 7) == 0.0  # the median of two values is their mean
    assert rule.kappa(20) == rule.kappa(20, 4, None) == rule.kappa(20, 4, 15)
    assert rule.kappa(8) is None  # n <= 2f: no guarantee
