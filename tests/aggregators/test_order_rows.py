"""``_order.coordinatewise(..., rows=...)``: a subset of rows read in place equals the kernel on a copy."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import _order


def _ranks_and_sum(x, rows, method, block):
    """Every rank, one call per rank, and the sum of ranks 1 .. n-1 (rows of ``x``, or all of them)."""
    n = len(rows) if rows is not None else x.shape[0]

    def rank(r):
        return lambda s, acc, out: out.copy_(s[r])

    ranks = torch.stack(
        [_order.coordinatewise(x, [r], rank(r), method=method, block=block, rows=rows) for r in range(n)]
    )
    sums = (
        _order.coordinatewise(
            x, [], lambda s, acc, out: out.copy_(acc), (1, n), method=method, block=block, rows=rows
        )
        if n > 1
        else None
    )
    return ranks, sums


@pytest.mark.parametrize("method", ["network", "sort"])
@pytest.mark.parametrize("rows", [[3], [4, 0, 2], [1, 1, 5, 2], [6, 5, 4, 3, 2, 1, 0], list(range(7))])
def test_row_subset_equals_the_kernel_on_a_copy(rows, method):
    g = torch.Generator().manual_seed(len(rows))
    x = torch.randint(-3, 4, (7, 301), generator=g).float()
    x[torch.rand(x.shape, generator=g) < 0.1] = float("inf")
    x[torch.rand(x.shape, generator=g) < 0.1] = float("-inf")
    keep = x.clone()
    got_ranks, got_sums = _ranks_and_sum(x, rows, method, block=64)
    assert torch.equal(got_ranks, x[rows].sort(dim=0).values)
    ref_sums = _ranks_and_sum(x[rows], None, method, block=64)[1]
    if ref_sums is None:
        assert got_sums is None
    else:  # +inf and -inf in one column sum to NaN on both sides
        torch.testing.assert_close(got_sums, ref_sums, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(x, keep)


def test_rows_out_of_bounds_raise():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="rows"):
        _order.coordinatewise(x, [0], lambda s, a, o: o.copy_(s[0]), rows=[0, 4])
    with pytest.raises(ValueError, match="n=2"):
        _order.coordinatewise(x, [2], lambda s, a, o: o.copy_(s[0]), rows=[0, 1])
