"""Krum and Multi-Krum: hand-worked examples, ByzFL agreement, invariances, faulty rows."""

from __future__ import annotations

import byzfl
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.krum import Krum, MultiKrum, krum_scores

# 1-d points 0, 1, 3, 10 with f = 1: k = n - f - 1 = 2 nearest others.
# scores: 0 -> 1 + 9 = 10, 1 -> 1 + 4 = 5, 3 -> 4 + 9 = 13, 10 -> 49 + 81 = 130.
POINTS = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hand_worked_scores_and_krum():
    d2 = (POINTS - POINTS.T) ** 2
    assert krum_scores(d2, 2).tolist() == [10.0, 5.0, 13.0, 130.0]
    agg = Krum(f=1)
    assert agg(POINTS).tolist() == [1.0]
    assert agg.last_info["selected"] == 1 and agg.last_info["score"] == 5.0


def test_blanchard_convention_and_ties():
    # k = n - f - 2 = 1: scores 1, 1, 4, 49 -> tie between rows 0 and 1, the lowest index wins
    agg = Krum(f=1, k=1)
    assert agg(POINTS).tolist() == [0.0]
    assert agg.spec == "krum(k=1)"


def test_hand_worked_multikrum():
    assert MultiKrum(f=1)(POINTS).item() == pytest.approx(4 / 3)  # rows 1, 0, 3 (scores 5, 10, 13)
    agg = MultiKrum(f=1, m=2)
    assert agg(POINTS).item() == pytest.approx(0.5)
    assert agg.last_info["selected"] == [0, 1]


@pytest.mark.parametrize("n,f", [(7, 2), (10, 3), (13, 4)])
def test_agrees_with_byzfl(n, f):
    x = torch.randn(n, 16, generator=_gen(n), dtype=torch.float64)
    x[:f] += 3.0
    assert torch.allclose(Krum(f)(x), byzfl.Krum(f)(x).double(), atol=1e-6)
    assert torch.allclose(MultiKrum(f)(x), byzfl.MultiKrum(f)(x).double(), atol=1e-6)


@pytest.mark.parametrize("cls", [Krum, MultiKrum])
def test_permutation_invariance_and_translation_equivariance(cls):
    x = torch.randn(9, 30, generator=_gen(1), dtype=torch.float64)
    agg = cls(f=2)
    out = agg(x)
    perm = torch.randperm(9, generator=_gen(2))
    assert torch.allclose(agg(x[perm]), out)
    shift = 1e3 * torch.randn(30, generator=_gen(3), dtype=torch.float64)
    assert torch.allclose(agg(x + shift), out + shift, atol=1e-9)


@pytest.mark.parametrize("cls", [Krum, MultiKrum])
@pytest.mark.parametrize("bad", [1e6, -1e6, float("inf")])
def test_outliers_stay_out(cls, bad):
    n, f = 11, 3
    honest = torch.rand(n - f, 20, generator=_gen(4))
    byz = torch.full((f, 20), bad)
    byz[0] *= -1 if bad != float("inf") else 1
    x = torch.cat([byz, honest])
    out = cls(f=f)(x)
    assert torch.all(out >= honest.min(0).values - 1e-6) and torch.all(out <= honest.max(0).values + 1e-6)


@pytest.mark.parametrize("cls", [Krum, MultiKrum])
def test_nan_rows_are_dropped_up_to_f(cls):
    n, f = 9, 2
    x = torch.randn(n, 12, generator=_gen(5), dtype=torch.float64)
    y = x.clone()
    y[[2, 6], 0] = float("nan")
    agg = cls(f=f)
    out = agg(y)
    assert agg.last_info["nonfinite_rows"] == 2
    keep = [i for i in range(n) if i not in (2, 6)]
    # the remaining rows are aggregated with f - 2 = 0 (n - f - 1 = 6 neighbours, m = 7)
    assert torch.allclose(out, cls(f=0)(x[keep]))
    if cls is Krum:
        ref = Krum(f=0)
        ref(x[keep])
        assert agg.last_info["selected"] == keep[ref.last_info["selected"]]
    y[4, 3] = float("inf")
    with pytest.raises(NonFiniteInputError):
        agg(y)


def test_selected_index_refers_to_the_input_after_drops():
    # after the NaN row goes, f = 1 and k = 3: scores of 0, 0.1, 0.25, 0.3 are .1625, .0725, .0875, .1325
    x = torch.tensor([[float("nan")], [5.0], [0.0], [0.1], [0.25], [0.3]], dtype=torch.float64)
    agg = Krum(f=2)
    assert agg(x).item() == 0.1
    assert agg.last_info["selected"] == 3


@pytest.mark.parametrize("cls", [Krum, MultiKrum])
def test_too_few_inputs_raise(cls):
    with pytest.raises(ValueError, match=r"n > 2f.*f=2.*n=4"):
        cls(f=2)(torch.zeros(4, 3))


def test_bad_parameters():
    with pytest.raises(ValueError, match="k must be >= 1"):
        Krum(f=1, k=0)
    with pytest.raises(ValueError, match="m must be >= 1"):
        MultiKrum(f=1, m=0)
    with pytest.raises(ValueError, match=r"k=5 .* n=4"):
        Krum(f=1, k=5).aggregate(torch.zeros(4, 2), 1)
    with pytest.raises(ValueError, match=r"m=6 exceeds .* n=5"):
        MultiKrum(f=1, m=6).aggregate(torch.zeros(5, 2), 1)
    assert build("multikrum(m=3, k=2)", f=1).spec == "multikrum(m=3, k=2)"


@pytest.mark.parametrize("cls", [Krum, MultiKrum])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(cls, dtype, device):
    x = torch.randn(7, 40, generator=_gen(6), dtype=dtype).to(device)
    out = cls(f=2)(x)
    assert out.dtype == dtype and out.device == x.device and out.shape == (40,)
    ref = cls(f=2)(x.double().cpu())
    assert torch.allclose(out.double().cpu(), ref, atol=1e-5)


def test_krum_output_is_a_copy():
    x = torch.randn(5, 3, generator=_gen(7))
    before = x.clone()
    out = Krum(f=1)(x)
    out += 1.0
    assert torch.equal(x, before)
