"""Bulyan's coordinate-wise phase on the comparator network: differential tests against the former
sort-based kernel and a loop reference, ties, f = 0, rows read in place."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators.bulyan import Bulyan, krum_selection, mean_around_median
from resam_flower.aggregators.krum import pairwise_sq_distances


def _sorted_window_mean(v: torch.Tensor, beta: int) -> torch.Tensor:
    """The kernel Bulyan used before the network (frozen copy): sort each column, take the window of
    ``beta`` sorted values whose farther end is the closest to the median (lowest window on ties)."""
    t = v.shape[0]
    s = v.T.contiguous().sort(dim=1).values
    med = s[:, (t - 1) // 2] if t % 2 else 0.5 * (s[:, t // 2 - 1] + s[:, t // 2])
    dev = (s - med.unsqueeze(1)).abs()
    ends = torch.maximum(dev[:, : t - beta + 1], dev[:, beta - 1 :])
    start = ends.argmin(dim=1)
    idx = start.unsqueeze(1) + torch.arange(beta).unsqueeze(0)
    return s.gather(1, idx).mean(dim=1)


def _closest_reference(v: torch.Tensor, beta: int) -> torch.Tensor:
    """Loop reference of the definition: per column the ``beta`` values with the smallest ``|v - M|``,
    ties in distance going to the smaller value (a stable sort of the sorted column by distance)."""
    out = []
    t = v.shape[0]
    for col in v.double().T.tolist():
        vals = sorted(col)
        med = vals[t // 2] if t % 2 else (vals[t // 2 - 1] + vals[t // 2]) / 2
        out.append(sum(sorted(vals, key=lambda a: abs(a - med))[:beta]) / beta)
    return torch.tensor(out, dtype=torch.float64)


SHAPES = [(t, beta) for t in (3, 4, 5, 7, 8, 11, 12, 16) for beta in range(1, t + 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t,beta", SHAPES)
def test_matches_former_sort_kernel_on_continuous_values(t, beta, dtype):
    g = torch.Generator().manual_seed(31 * t + beta)
    scale = 10.0 ** torch.randint(-3, 4, (1, 300), generator=g)  # columns of very different scales
    v = (torch.randn(t, 300, generator=g, dtype=torch.float64) * scale).to(dtype)
    old = _sorted_window_mean(v, beta)
    scale = v.abs().amax(dim=0) * (1e-6 if dtype == torch.float32 else 1e-14)  # sums round differently
    for method in ("network", "sort"):
        new = mean_around_median(v, beta, method=method)
        assert new.dtype == dtype
        assert bool(((new - old).abs() <= scale).all()), method


@pytest.mark.parametrize("t,beta", SHAPES)
def test_ties_follow_the_definition_on_both_paths(t, beta):
    g = torch.Generator().manual_seed(7 * t + beta)
    v = torch.randint(-3, 4, (t, 400), generator=g).double()  # many equal values and equal distances
    ref = _closest_reference(v, beta)
    for method in ("network", "sort"):
        assert torch.equal(mean_around_median(v, beta, method=method), ref), method
    # where no tie can matter (distinct values, distinct distances) the former kernel agreed as well
    w = torch.randperm(t * 400, generator=g).double().view(t, 400) * 2.0**0.5
    assert torch.allclose(_sorted_window_mean(w, beta), mean_around_median(w, beta), rtol=1e-12)


def test_tie_case_where_the_former_kernel_kept_a_farther_value():
    # median 0, distances 2, 2, 0, 1, 3: the three closest values are 0, 1 and one -2 (mean -1/3).
    # The former kernel took the window [-2, -2, 0] (farther end 2, as for [-2, 0, 1]; lowest window).
    v = torch.tensor([[-2.0], [-2.0], [0.0], [1.0], [3.0]], dtype=torch.float64)
    assert mean_around_median(v, 3).item() == pytest.approx(-1 / 3)
    assert _sorted_window_mean(v, 3).item() == pytest.approx(-4 / 3)
    # a distance tie across the median goes to the smaller value, as in the former kernel
    sym = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    assert mean_around_median(sym, 2).item() == -0.5 == _sorted_window_mean(sym, 2).item()


def test_rows_are_read_in_place_and_in_any_order():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 40_000, generator=g)  # two network blocks on CPU, the second one narrower
    x[:, ::5] = torch.randint(-2, 3, (20, 8000), generator=g).float()
    keep = x.clone()
    rows = [17, 2, 9, 0, 11, 5, 14, 3, 8, 19, 1, 6]
    ref = mean_around_median(x[rows], 4, method="sort")
    for method in ("network", "sort", "auto"):
        torch.testing.assert_close(
            mean_around_median(x, 4, rows=rows, method=method), ref, rtol=1e-6, atol=1e-6
        )
    assert torch.equal(x, keep)


def test_bad_window_raises():
    with pytest.raises(ValueError, match="beta=0"):
        mean_around_median(torch.zeros(5, 3), 0)
    with pytest.raises(ValueError, match="beta=6, t=5"):
        mean_around_median(torch.zeros(5, 3), 6)


@pytest.mark.parametrize("n,f", [(7, 1), (11, 2), (12, 2), (15, 3), (20, 4), (21, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_bulyan_matches_former_implementation(n, f, ties):
    g = torch.Generator().manual_seed(n * 10 + f)
    x = torch.randn(n, 257, generator=g, dtype=torch.float64)
    x[:f] += 5 * torch.randn(f, 257, generator=g, dtype=torch.float64)
    if ties:
        x = x.round()
    agg = Bulyan(f)
    out = agg(x)
    sel = krum_selection(pairwise_sq_distances(x, f, "bulyan").d2, f, n - 2 * f)
    assert agg.last_info["selected"] == sel.tolist()
    beta = n - 4 * f
    ref = _closest_reference(x[sel], beta) if ties else _sorted_window_mean(x[sel], beta)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_f_zero_averages_every_input_with_ties(dtype):
    g = torch.Generator().manual_seed(9)
    x = torch.randint(-2, 3, (6, 50), generator=g).to(dtype)
    out = Bulyan(f=0)(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, x.mean(0))
    torch.testing.assert_close(mean_around_median(x, 6), x.mean(0))  # beta = t: the whole column
