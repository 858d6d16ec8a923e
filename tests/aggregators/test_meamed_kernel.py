"""MeaMed's kernel ``mean_of_closest`` (shared with Bulyan): differential tests against the former
MeaMed kernel (frozen copy), infinite distances, results independent of the thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resam_flower.aggregators import _order
from resam_flower.aggregators.bulyan import mean_around_median as bulyan_kernel
from resam_flower.aggregators.meamed import MeanAroundMedian, mean_around_median, mean_of_closest


def _former_meamed(x: torch.Tensor, f: int, method: str) -> torch.Tensor:
    """The MeaMed kernel before it was shared with Bulyan (frozen copy): the same network, then the ``f``
    choices ``s_(l)`` vs ``s_(l+m)`` as one clamp on ``(f, block)`` tensors."""
    n = x.shape[0]
    m = n - f
    mid = [(n - 1) // 2] if n % 2 else [n // 2 - 1, n // 2]

    def combine(s, acc, out):
        if f:
            med = s[mid[0]] if len(mid) == 1 else torch.mul(s[mid[0]], 0.5).add_(s[mid[1]], alpha=0.5)
            low, high = s[:f], s[m:]
            d = torch.sub(high, med).sub_(torch.sub(med, low)).sign_().add_(0.5).mul_(float("-inf"))
            acc.add_(torch.clamp(d, min=low, max=high, out=d).sum(dim=0))
        torch.div(acc, m, out=out)

    return _order.coordinatewise(x, [*range(f), *range(m, n), *mid], combine, (f, m), method=method)


CASES = [(1, 0), (3, 1), (4, 1), (7, 3), (10, 2), (20, 4), (21, 5), (33, 10), (60, 12)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,f", CASES)
def test_same_choices_as_the_former_kernel(n, f, dtype):
    g = torch.Generator().manual_seed(1000 + 10 * n + f)
    ties = (torch.randint(-4, 5, (n, 3000), generator=g) / 2).to(dtype)  # distance ties, exact sums
    scale = 10.0 ** torch.randint(-3, 4, (1, 3000), generator=g)
    noise = (torch.randn(n, 3000, generator=g, dtype=torch.float64) * scale).to(dtype)
    bound = noise.abs().amax(dim=0) * (1e-6 if dtype == torch.float32 else 1e-14)  # sums round differently
    for method in ("network", "sort"):
        assert torch.equal(mean_around_median(ties, f, method=method), _former_meamed(ties, f, method))
        diff = mean_around_median(noise, f, method=method) - _former_meamed(noise, f, method)
        assert bool((diff.abs() <= bound).all()), method  # one other choice would be far beyond the bound


def _closest_mean_by_sorting(v: np.ndarray, beta: int) -> np.ndarray:
    """Independent reference: per column, sort by (distance to the median, value), average the first beta."""
    out = np.empty(v.shape[1])
    for k, col in enumerate(v.T):
        med = float(np.median(col))  # mean of the two middle values for even t
        order = np.lexsort((col, np.abs(col - med)))  # primary key |s - M|, ties to the smaller value
        out[k] = col[order[:beta]].sum() / beta
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bulyan_and_meamed_kernel_against_sorting_by_distance(dtype):
    """Half-integer values: many distance ties, between equal and between different values (M - a, M + a);
    sums are exact, so one other choice moves a mean by at least 0.5 / beta."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randint(-6, 7, (12, 2000), generator=g) / 2).to(dtype)
    assert bulyan_kernel is mean_of_closest
    for beta in (1, 4, 7, 9, 11, 12):
        ref = torch.from_numpy(_closest_mean_by_sorting(x.double().numpy(), beta))
        for method in ("network", "sort"):
            out = mean_of_closest(x, beta, method=method)
            torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-6, msg=f"beta={beta}, {method}")
        rows = [*range(0, 12, 2), 1, 3, 5]  # Bulyan's call on selected rows, read in place
        ref_rows = torch.from_numpy(_closest_mean_by_sorting(x[rows].double().numpy(), min(beta, 9)))
        torch.testing.assert_close(mean_of_closest(x, min(beta, 9), rows=rows).double(), ref_rows,
                                   rtol=0, atol=1e-6)
        if beta > 6:  # MeaMed's range f = t - beta < beta
            torch.testing.assert_close(MeanAroundMedian(f=12 - beta)(x).double(), ref, rtol=0, atol=1e-6)


def test_infinite_distances_tie_to_the_smaller_value():
    inf = float("inf")
    v = torch.tensor([[-inf, -inf, 1.0], [0.0, 0.0, 2.0], [inf, 5.0, 3.0]])
    for method in ("network", "sort"):
        out = mean_of_closest(v, 2, method=method)  # medians 0, 0, 2: keep -inf (a tie), 0 and 5, 1 and 2
        assert torch.equal(out, torch.tensor([-inf, 2.5, 1.5]))


def test_results_do_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(20, 3 * _order.default_block(torch.zeros(1)) + 17, generator=g)  # 4 blocks, one narrow
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append((mean_around_median(x, 4), mean_of_closest(x, 4, rows=[*range(0, 20, 2), 1, 3])))
    finally:
        torch.set_num_threads(threads)
    for meamed_out, bulyan_out in outs[1:]:
        assert torch.equal(meamed_out, outs[0][0]) and torch.equal(bulyan_out, outs[0][1])
    torch.testing.assert_close(outs[0][0], mean_around_median(x, 4, method="sort"), rtol=1e-5, atol=1e-6)
