"""Nearest Neighbour Mixing: hand-worked example, ByzFL agreement, equivariances, faulty rows."""

from __future__ import annotations

import byzfl
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.nnm import NearestNeighborMixing, nearest_neighbours


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hand_worked_example():
    # 1-d points 0, 1, 3, 10 and f = 1: each row averages its 3 nearest (itself included).
    # 0 -> {0, 1, 3}, 1 -> {1, 0, 3}, 3 -> {3, 1, 0}, 10 -> {10, 3, 1}
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)
    out, f = NearestNeighborMixing(f=1).apply(x, 1)
    assert f == 1
    assert torch.allclose(out.squeeze(1), torch.tensor([4 / 3, 4 / 3, 4 / 3, 14 / 3], dtype=torch.float64))


def test_neighbourhood_includes_the_row_itself_first():
    d2 = torch.zeros(4, 4, dtype=torch.float64)  # all tied at distance 0
    nbrs = nearest_neighbours(d2, 2)
    assert nbrs[:, 0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("n,f", [(5, 2), (9, 3), (12, 4)])
def test_agrees_with_byzfl(n, f):
    x = torch.randn(n, 10, generator=_gen(n), dtype=torch.float64)
    assert torch.allclose(NearestNeighborMixing(f)(x), byzfl.NNM(f)(x).double(), atol=1e-6)


def test_permutation_and_translation_equivariance():
    x = torch.randn(9, 25, generator=_gen(1), dtype=torch.float64)
    nnm = NearestNeighborMixing(f=3)
    out = nnm(x)
    perm = torch.randperm(9, generator=_gen(2))
    assert torch.allclose(nnm(x[perm]), out[perm])
    shift = 1e3 * torch.randn(25, generator=_gen(3), dtype=torch.float64)
    assert torch.allclose(nnm(x + shift), out + shift, atol=1e-9)


@pytest.mark.parametrize("bad", [1e6, -1e6])
def test_far_rows_do_not_reach_honest_outputs(bad):
    n, f = 10, 3
    honest = torch.rand(n - f, 8, generator=_gen(4))
    x = torch.cat([honest, torch.full((f, 8), bad)])
    out = NearestNeighborMixing(f=f)(x)
    assert out.shape == x.shape
    # every honest row mixes exactly the n - f honest rows
    assert torch.allclose(out[: n - f], honest.mean(0).expand(n - f, -1), atol=1e-5)
    assert build("nnm+krum", f=f)(x).sub(honest.mean(0)).abs().max() < 1e-5


def test_nonfinite_rows_are_dropped_and_f_shrinks():
    n, f = 9, 3
    x = torch.randn(n, 6, generator=_gen(5), dtype=torch.float64)
    y = x.clone()
    y[1, 0] = float("inf")
    y[7, 2] = float("nan")
    nnm = NearestNeighborMixing(f=f)
    out, f2 = nnm.apply(y, f)
    keep = [0, 2, 3, 4, 5, 6, 8]
    assert f2 == 1 and out.shape == (7, 6)
    assert nnm.last_info["nonfinite_rows"] == 2
    assert torch.allclose(out, NearestNeighborMixing(f=1)(x[keep]))
    y[3, 3] = float("nan")
    y[4, 3] = float("nan")
    with pytest.raises(NonFiniteInputError):
        nnm(y)


def test_too_few_inputs_raise():
    with pytest.raises(ValueError, match=r"f=2.*n=4"):
        NearestNeighborMixing(f=2)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"nnm: n > 2f"):
        build("nnm+mean", f=3)(torch.zeros(6, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(dtype, device):
    x = torch.randn(7, 33, generator=_gen(6), dtype=dtype).to(device)
    out = NearestNeighborMixing(f=2)(x)
    assert out.dtype == dtype and out.device == x.device and out.shape == x.shape
    ref = NearestNeighborMixing(f=2)(x.double().cpu())
    assert torch.allclose(out.double().cpu(), ref, atol=1e-5)
