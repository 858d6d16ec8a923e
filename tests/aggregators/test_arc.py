"""Adaptive robust clipping: the count k, hand-worked values, ByzFL parity, ties, errors."""

from __future__ import annotations

import byzfl
import numpy as np
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.arc import AdaptiveRobustClipping, arc_count


@pytest.mark.parametrize(
    ("n", "f", "k"), [(4, 1, 1), (5, 2, 2), (10, 0, 0), (20, 4, 6), (3, 1, 1), (10, 5, 5), (7, 7, 0)]
)
def test_count(n, f, k):
    assert arc_count(n, f) == k


def test_count_agrees_with_byzfl_float_formula():
    for n in range(1, 80):
        for f in range(0, n + 1):
            assert arc_count(n, f) == int((2 * f / n) * (n - f)), (n, f)


def test_hand_worked():
    """n = 4, f = 1: k = floor(2 * 1/4 * 3) = 1; the norm-10 input is clipped to the next norm, 3."""
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    pre = AdaptiveRobustClipping(f=1)
    out = pre(x)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 3.0]]).double())
    assert pre.last_info == {"nonfinite_rows": 0, "k": 1, "clipped": 1, "threshold": 3.0}
    # n = 5, f = 2: k = 2, threshold the third largest norm (4).
    y = torch.tensor([[5.0], [-4.0], [1.0], [-100.0], [0.5]], dtype=torch.float64)
    expected = torch.tensor([[4.0], [-4.0], [1.0], [-4.0], [0.5]], dtype=torch.float64)
    torch.testing.assert_close(AdaptiveRobustClipping(f=2)(y), expected)


def test_ties_with_the_threshold_are_left_alone():
    x = torch.tensor([[2.0], [-2.0], [2.0], [1.0]], dtype=torch.float64)
    pre = AdaptiveRobustClipping(f=1)
    assert torch.equal(pre(x), x) and pre.last_info["clipped"] == 0 and pre.last_info["k"] == 1


@pytest.mark.parametrize(("n", "f"), [(5, 1), (10, 2), (13, 3), (20, 4)])
def test_matches_byzfl(n, f):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 6)) * rng.uniform(0.1, 10.0, size=(n, 1))
    theirs = byzfl.ARC(f=f)(x.copy())
    np.testing.assert_allclose(AdaptiveRobustClipping(f=f)(torch.from_numpy(x)).numpy(), theirs, rtol=1e-14)


def test_permutation_equivariance_and_f_unchanged():
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(1)) * torch.arange(1.0, 10.0)[:, None]
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    pre = AdaptiveRobustClipping(f=2)
    assert torch.equal(pre(x[perm]), pre(x)[perm])
    assert pre.apply(x, 2)[1] == 2 and pre.output_shape(9, 2) == (9, 2)


def test_far_rows_are_brought_to_the_honest_scale():
    g = torch.Generator().manual_seed(3)
    honest = torch.randn(16, 5, generator=g, dtype=torch.float64)
    x = torch.cat([honest, 1e6 * torch.ones(4, 5, dtype=torch.float64)])
    out = AdaptiveRobustClipping(f=4)(x)
    assert out.norm(dim=1).max() <= honest.norm(dim=1).max() * (1 + 1e-12)


def test_nonfinite_rows():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    bad = x.clone()
    bad[0, 2] = float("inf")
    pre = AdaptiveRobustClipping(f=2)
    out, f = pre.apply(bad, 2)
    assert f == 1 and pre.last_info["nonfinite_rows"] == 1 and pre.last_info["k"] == arc_count(5, 1)
    torch.testing.assert_close(out, AdaptiveRobustClipping(f=1)(x[1:]))
    bad[[2, 4], 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match="3 of 6 inputs are non-finite, more than f=2"):
        pre(bad)


def test_input_condition_and_parameters():
    assert AdaptiveRobustClipping(f=3).min_inputs() == 3
    with pytest.raises(ValueError, match=r"arc needs n >= max\(1, f\)"):
        AdaptiveRobustClipping(f=3)(torch.ones(2, 2))
    with pytest.raises(ValueError, match="f must be >= 0, got -1"):
        AdaptiveRobustClipping(f=-1)
    with pytest.raises(ValueError, match="takes no parameter"):
        build("arc(c=1.0)+mean", f=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(dtype, device):
    x = (torch.randn(6, 4, generator=torch.Generator().manual_seed(5)) * torch.arange(1.0, 7.0)[:, None])
    out = AdaptiveRobustClipping(f=1)(x.to(device=device, dtype=dtype))
    assert out.dtype == dtype and out.device.type == device.type
    expected = AdaptiveRobustClipping(f=1)(x.double())
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-6, atol=1e-6)
