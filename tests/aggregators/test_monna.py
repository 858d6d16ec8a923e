"""MoNNA: hand-worked example, ByzFL agreement, trusted index handling, faulty rows."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.monna import MoNNA


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


POINTS = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)


def test_hand_worked_example():
    # f = 1: the 3 nearest of x_idx, itself included
    assert MoNNA(f=1, idx=0)(POINTS).item() == pytest.approx(4 / 3)  # {0, 1, 3}
    agg = MoNNA(f=1, idx=3)
    assert agg(POINTS).item() == pytest.approx(14 / 3)  # {10, 3, 1}
    assert agg.last_info["selected"] == [1, 2, 3]
    assert agg.spec == "monna(idx=3)"


@pytest.mark.parametrize("idx", [0, 4, 8])
def test_agrees_with_byzfl(idx):
    byzfl = pytest.importorskip("byzfl")
    x = torch.randn(9, 12, generator=_gen(idx), dtype=torch.float64)
    assert torch.allclose(MoNNA(3, idx)(x), byzfl.MoNNA(3, idx)(x).double(), atol=1e-6)


def test_trusted_row_is_always_included():
    # rows 0..3 tie at distance 0 from the trusted row 3; only 3 are averaged, row 3 must be one of them
    x = torch.tensor([[1.0], [1.0], [1.0], [1.0], [5.0]], dtype=torch.float64)
    agg = MoNNA(f=2, idx=3)
    assert agg(x).item() == 1.0
    assert 3 in agg.last_info["selected"] and len(agg.last_info["selected"]) == 3


def test_translation_equivariance_and_relabelling():
    x = torch.randn(9, 20, generator=_gen(1), dtype=torch.float64)
    out = MoNNA(f=3, idx=2)(x)
    shift = 1e3 * torch.randn(20, generator=_gen(2), dtype=torch.float64)
    assert torch.allclose(MoNNA(f=3, idx=2)(x + shift), out + shift, atol=1e-9)
    perm = torch.randperm(9, generator=_gen(3))
    new_idx = int((perm == 2).nonzero())
    assert torch.allclose(MoNNA(f=3, idx=new_idx)(x[perm]), out)


@pytest.mark.parametrize("bad", [1e6, -1e6, float("inf")])
def test_outliers_stay_out(bad):
    n, f = 11, 3
    honest = torch.rand(n - f, 20, generator=_gen(4))
    x = torch.cat([honest, torch.full((f, 20), bad)])
    assert torch.allclose(MoNNA(f=f, idx=1)(x), honest.mean(0), atol=1e-6)


def test_nonfinite_rows_and_the_trusted_index():
    x = torch.randn(8, 5, generator=_gen(5), dtype=torch.float64)
    y = x.clone()
    y[1, 0] = float("nan")
    agg = MoNNA(f=3, idx=4)
    keep = [0, 2, 3, 4, 5, 6, 7]
    # idx keeps pointing at input row 4 (row 3 of the kept ones)
    assert torch.allclose(agg(y), MoNNA(f=2, idx=3)(x[keep]))
    assert agg.last_info["nonfinite_rows"] == 1 and 4 in agg.last_info["selected"]
    with pytest.raises(NonFiniteInputError, match="trusted input idx=1"):
        MoNNA(f=3, idx=1)(y)
    y[[2, 3, 5], 0] = float("inf")
    with pytest.raises(NonFiniteInputError):
        agg(y)


def test_bad_configuration():
    with pytest.raises(ValueError, match="idx must be >= 0"):
        MoNNA(f=1, idx=-1)
    with pytest.raises(ValueError, match=r"idx=5 must be < n=5"):
        MoNNA(f=1, idx=5)(torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"n > 2f.*f=2.*n=4"):
        MoNNA(f=2)(torch.zeros(4, 2))
    assert build("monna", f=1, idx=2).idx == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(dtype, device):
    x = torch.randn(7, 30, generator=_gen(6), dtype=dtype).to(device)
    out = MoNNA(f=2, idx=1)(x)
    assert out.dtype == dtype and out.device == x.device
    assert torch.allclose(out.double().cpu(), MoNNA(f=2, idx=1)(x.double().cpu()), atol=1e-5)
