"""``Pairwise`` without row copies: dropped non-finite rows are skipped in place, ``x`` is copied lazily."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError
from resam_flower.aggregators._linalg import pairwise_sq_distances
from resam_flower.aggregators.krum import Krum, MultiKrum
from resam_flower.aggregators.nnm import NearestNeighborMixing


def _with_bad_rows(seed: int, close: bool = False) -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 500, generator=g)
    if close:  # rows close to each other, far from the origin: the guard recomputes the Gram
        x = 100.0 * torch.randn(500, generator=g) + 1e-3 * x
    x[2, 7] = float("nan")
    x[6, 0] = float("-inf")
    return x, [0, 1, 3, 4, 5, 7, 8]


def test_fast_path_does_not_copy_the_finite_rows():
    x, kept = _with_bad_rows(0)
    p = pairwise_sq_distances(x, 3, "t")
    assert p.method == "fast" and p.dropped == 2 and p.f == 1 and p.n == 7
    assert p._x is None  # nothing copied yet
    assert torch.equal(p.row(2), x[kept[2]]) and p.row(2).data_ptr() == x[kept[2]].data_ptr()
    w = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)
    torch.testing.assert_close(p.weighted_sum(w), (w.float()[:, None] * x[kept]).sum(0))
    assert p._x is None
    assert torch.equal(p.x, x[kept]) and p.x is p.x  # copied once, on demand


def test_guard_path_with_dropped_rows_reads_only_finite_rows():
    x, kept = _with_bad_rows(1, close=True)
    p = pairwise_sq_distances(x, 2, "t")
    assert p.method in ("centred", "exact") and p.kept.tolist() == kept
    assert torch.equal(p.x, x[kept])
    ref = pairwise_sq_distances(x[kept], 0, "t")
    torch.testing.assert_close(p.d2, ref.d2)
    assert p.method == ref.method


def test_without_drops_x_is_the_input():
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(2))
    p = pairwise_sq_distances(x, 1, "t")
    assert p.x is x and p.source is x and p.n == 5


@pytest.mark.parametrize("close", [False, True])
def test_rules_on_dropped_rows_equal_the_rules_on_the_finite_rows(close):
    x, kept = _with_bad_rows(3, close)
    clean = x[kept]
    for rule in (Krum(f=3), MultiKrum(f=3), MultiKrum(f=3, m=2)):
        ref = type(rule)(**{**rule.params(), "f": 1})(clean)
        torch.testing.assert_close(rule(x), ref)
        assert rule.last_info["nonfinite_rows"] == 2
    nnm = NearestNeighborMixing(f=3)
    out, f = nnm._apply(x, 3)
    ref, _ = NearestNeighborMixing(f=1)._apply(clean, 1)
    assert f == 1 and out.shape == (7, 500)
    torch.testing.assert_close(out, ref)


def test_too_many_or_all_nonfinite_rows_still_raise():
    x = torch.full((3, 4), float("nan"))
    with pytest.raises(NonFiniteInputError, match="all 3 inputs"):
        pairwise_sq_distances(x, 3, "t")
    with pytest.raises(NonFiniteInputError, match="3 of 3 inputs are non-finite, more than f=2"):
        pairwise_sq_distances(x, 2, "t")
