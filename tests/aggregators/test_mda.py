"""Minimum Diameter Averaging: exact search, the (f, kappa) bound, refusal above the subset limit."""

from __future__ import annotations

import itertools

import byzfl
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.mda import MinimumDiameterAveraging, min_diameter_removal, search_size


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _brute_force(x: torch.Tensor, f: int) -> tuple[float, list[tuple[int, ...]]]:
    """Independent reference: every kept subset (as ByzFL loops), explicit distances.

    Returns the smallest diameter and every kept subset that attains it.
    """
    n = x.shape[0]
    dist = torch.cdist(x.double(), x.double()).tolist()
    diam = {
        s: max((dist[i][j] for i, j in itertools.combinations(s, 2)), default=0.0)
        for s in itertools.combinations(range(n), n - f)
    }
    best = min(diam.values())
    return best, [s for s, v in diam.items() if v <= best * (1 + 1e-12)]


def _check_optimal(x: torch.Tensor, f: int) -> None:
    agg = MinimumDiameterAveraging(f)
    out = agg(x)
    best, argmins = _brute_force(x, f)
    assert agg.last_info["diameter"] == pytest.approx(best, rel=1e-6)
    assert tuple(agg.last_info["selected"]) in argmins
    assert torch.allclose(out.double(), x[list(agg.last_info["selected"])].double().mean(0), atol=1e-6)


def _diameter(x: torch.Tensor) -> float:
    return float(torch.cdist(x, x).max())


def test_hand_worked_example():
    # 1-d 0, 1, 3, 10 with f = 1: {0, 1, 3} has diameter 3, every set with 10 at least 7.
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)
    agg = MinimumDiameterAveraging(f=1)
    assert agg(x).item() == pytest.approx(4 / 3)
    assert agg.last_info["selected"] == [0, 1, 2] and agg.last_info["diameter"] == pytest.approx(3.0)
    # 2-d: a tight triangle and two far points; f = 2 removes the far ones
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [-6.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(MinimumDiameterAveraging(f=2)(y), torch.tensor([1 / 3, 1 / 3], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(12))
def test_exact_search_matches_brute_force(seed):
    g = _gen(seed)
    n = 5 + seed % 9
    f = 1 + seed % ((n - 1) // 2)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x[:f] *= 1.0 + seed / 4
    _check_optimal(x, f)


def test_exact_search_with_ties_and_duplicates():
    # integer grid points: many equal distances and several optimal subsets
    x = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [2, 0], [0, 2], [2, 2], [1, 1]], dtype=torch.float64)
    for f in (1, 2, 3):
        _check_optimal(x, f)


def test_search_size():
    assert search_size(20, 4) == 16 and search_size(9, 8) == 9 and search_size(41, 20) == 1 << 20


def test_agrees_with_byzfl():
    x = torch.randn(9, 6, generator=_gen(9), dtype=torch.float64)
    x[:2] += 2.0
    assert torch.allclose(MinimumDiameterAveraging(3)(x), byzfl.MDA(3)(x).double(), atol=1e-6)


def test_removal_handles_n_equal_2f_plus_1():
    # no f + 1 disjoint pairs exist among 2f + 1 points: the search must scan every pair
    x = torch.tensor([[0.0], [1.0], [2.5], [7.0], [20.0]], dtype=torch.float64)
    d2 = (x - x.T) ** 2
    removed, diam2 = min_diameter_removal(d2, 2)
    assert sorted(removed.tolist()) == [3, 4] and diam2 == pytest.approx(6.25)


def _kappa_holds(x: torch.Tensor, f: int) -> float:
    """Largest ``||MDA(x) - mean(S)|| / (kappa * diam(S))`` over every S of size n - f (must be <= 1)."""
    agg = MinimumDiameterAveraging(f)
    out = agg(x)
    n = x.shape[0]
    kappa = agg.kappa(n)
    worst = 0.0
    for s in itertools.combinations(range(n), n - f):
        xs = x[list(s)]
        worst = max(worst, float((out - xs.mean(0)).norm()) / (kappa * _diameter(xs)))
    return worst


@pytest.mark.parametrize("seed", range(4))
def test_kappa_bound_on_random_inputs(seed):
    x = torch.randn(7, 4, generator=_gen(100 + seed), dtype=torch.float64)
    assert _kappa_holds(x, 2) <= 1.0 + 1e-12


def test_kappa_bound_on_adversarial_inputs():
    # Byzantine rows just inside the honest diameter, all on one side: MDA keeps them.
    g = _gen(7)
    n, f = 9, 3
    honest = torch.randn(n - f, 3, generator=g, dtype=torch.float64)
    mu = honest.mean(0)
    diam = _diameter(honest)
    direction = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    worst = 0.0
    for scale in [0.3, 0.6, 0.9, 0.99, 1.5]:
        byz = (mu + scale * diam * direction).expand(f, 3)
        x = torch.cat([honest, byz])
        worst = max(worst, _kappa_holds(x, f))
    # the tightest 1-d case: f points at distance D, n - 2f at 0, f at D - tiny
    x = torch.cat([torch.zeros(n - 2 * f, 1), torch.full((f, 1), 0.999), torch.full((f, 1), -1.0)]).double()
    worst = max(worst, _kappa_holds(x, f))
    assert 0.3 < worst <= 1.0 + 1e-12  # the bound holds and the inputs do stress it
    assert MinimumDiameterAveraging(f).kappa(n) == pytest.approx(2 * f / (n - f))


def test_refuses_above_the_subset_limit():
    limit = r"up to min\(2\^f, C\(n, f\)\) = 2,097,152 .*C\(n=43, f=21\) = .*max_subsets=1,048,576"
    with pytest.raises(ValueError, match=limit):
        MinimumDiameterAveraging(f=21)(torch.zeros(43, 2))
    limit = r"= 64 candidate subsets \(C\(n=13, f=6\) = 1,716\).*max_subsets=50"
    with pytest.raises(ValueError, match=limit):
        build("mda(max_subsets=50)", f=6)(torch.zeros(13, 2))
    assert MinimumDiameterAveraging(f=6, max_subsets=64)(torch.zeros(13, 2)).shape == (2,)


def test_f_zero_is_the_mean():
    x = torch.randn(5, 4, generator=_gen(8), dtype=torch.float64)
    assert torch.allclose(MinimumDiameterAveraging(0)(x), x.mean(0))


def test_permutation_invariance_and_translation_equivariance():
    x = torch.randn(10, 20, generator=_gen(9), dtype=torch.float64)
    agg = MinimumDiameterAveraging(f=3)
    out = agg(x)
    assert torch.allclose(agg(x[torch.randperm(10, generator=_gen(10))]), out)
    shift = 1e3 * torch.randn(20, generator=_gen(11), dtype=torch.float64)
    assert torch.allclose(agg(x + shift), out + shift, atol=1e-9)


@pytest.mark.parametrize("bad", [1e6, -1e6, float("inf")])
def test_outliers_stay_out(bad):
    n, f = 11, 3
    honest = torch.rand(n - f, 20, generator=_gen(12))
    x = torch.cat([torch.full((f, 20), bad), honest])
    out = MinimumDiameterAveraging(f=f)(x)
    assert torch.allclose(out, honest.mean(0), atol=1e-6)


def test_nan_rows_dropped_up_to_f():
    x = torch.randn(9, 5, generator=_gen(13), dtype=torch.float64)
    y = x.clone()
    y[4, 1] = float("nan")
    agg = MinimumDiameterAveraging(f=3)
    keep = [0, 1, 2, 3, 5, 6, 7, 8]
    assert torch.allclose(agg(y), MinimumDiameterAveraging(f=2)(x[keep]))
    assert agg.last_info["nonfinite_rows"] == 1 and all(i in keep for i in agg.last_info["selected"])
    y[[0, 1, 2], 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        agg(y)


def test_too_few_inputs_raise():
    with pytest.raises(ValueError, match=r"n > 2f.*f=3.*n=6"):
        MinimumDiameterAveraging(f=3)(torch.zeros(6, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(dtype, device):
    x = torch.randn(8, 30, generator=_gen(14), dtype=dtype).to(device)
    out = MinimumDiameterAveraging(f=2)(x)
    assert out.dtype == dtype and out.device == x.device
    _check_optimal(x.cpu(), 2)
