"""Row-subset products of ``_rowops`` (no copies) and the huge-page output allocation."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import _rowops
from resam_flower.aggregators._rowops import empty_rows, mix, weighted_sum


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "rows,weights",
    [
        (None, [0.5, 0.25, 0.0, 0.125, 0.125, 0.0, 0.0]),  # runs 0-1 and 3-4
        (None, [0.0] * 6 + [1.0]),  # one row at the end
        ([6, 0, 3], [0.2, 0.3, 0.5]),  # rows in any order
        ([2, 2, 5], [0.25, 0.25, 0.5]),  # a row listed twice: its weights add up
        (list(range(7)), [1 / 7] * 7),  # every row: one run
    ],
)
def test_weighted_sum_equals_dense_reference(rows, weights, dtype):
    x = torch.randn(7, 300, generator=_gen(0), dtype=dtype)
    w = torch.tensor(weights, dtype=torch.float64)
    idx = list(range(7)) if rows is None else rows
    ref = (w.to(dtype)[:, None] * x[idx]).sum(0)
    got = weighted_sum(w, x, rows)
    assert got.dtype == dtype and got.shape == (300,)
    torch.testing.assert_close(got, ref)


def test_weighted_sum_never_reads_rows_of_zero_weight():
    x = torch.randn(5, 40, generator=_gen(1))
    x[1] = float("nan")
    x[4, 3] = float("inf")
    w = torch.tensor([0.5, 0.0, 0.25, 0.25, 0.0])
    got = weighted_sum(w, x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, 0.5 * x[0] + 0.25 * x[2] + 0.25 * x[3])
    assert torch.equal(weighted_sum(torch.zeros(5), x), torch.zeros(40))


def test_weighted_sum_rejects_mismatched_rows():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="3 weights"):
        weighted_sum(torch.ones(3), x)
    with pytest.raises(ValueError, match="rows"):
        weighted_sum(torch.ones(2), x, [0, 4])


@pytest.mark.parametrize("rows", [None, [0, 2, 3, 5, 6], [6, 5, 4, 3, 2, 1, 0]])
def test_mix_equals_matmul_of_gathered_rows_across_blocks(rows, monkeypatch):
    monkeypatch.setattr(_rowops, "BLOCK", 64)  # several column blocks, the last one narrower
    x = torch.randn(7, 300, generator=_gen(2), dtype=torch.float64)
    x[1] = float("nan")  # never gathered when rows leaves it out
    idx = list(range(7)) if rows is None else rows
    w = torch.rand(4, len(idx), generator=_gen(3), dtype=torch.float64)
    got = mix(w, x, rows)
    assert got.shape == (4, 300)
    if rows is None:
        assert torch.isnan(got).all()
    else:
        torch.testing.assert_close(got, w @ x[idx], equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_empty_rows_large_and_small(dtype, monkeypatch):
    like = torch.zeros(1, dtype=dtype)
    monkeypatch.setattr(_rowops, "HUGE_PAGE_MIN_BYTES", 1 << 12)
    big = empty_rows(64, 1000, like)  # the mapped path where the platform has MADV_HUGEPAGE
    small = empty_rows(2, 3, like)
    for t, shape in ((big, (64, 1000)), (small, (2, 3))):
        assert t.shape == shape and t.dtype == dtype and t.is_contiguous()
        t.fill_(2)
        assert float(t.double().sum()) == 2 * t.numel()
    view = big[5]
    del big
    assert float(view.double().sum()) == 2000  # the mapping lives as long as any view of it
    monkeypatch.setattr(_rowops, "HUGE_PAGE_MIN_BYTES", 0)
    assert empty_rows(64, 1000, like).untyped_storage().resizable()  # 0 disables the mapped path


def test_device_and_dtype(device):
    x = torch.randn(6, 50, generator=_gen(4)).to(device)
    w = torch.tensor([0.5, 0.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    out = weighted_sum(w, x)
    assert out.device == x.device and out.dtype == x.dtype
    torch.testing.assert_close(out.cpu(), 0.5 * (x[0] + x[2]).cpu())
    m = mix(torch.eye(3, dtype=torch.float64), x, [5, 1, 3])
    assert m.device == x.device
    torch.testing.assert_close(m.cpu(), x[[5, 1, 3]].cpu())


def test_inputs_tracked_by_autograd_get_differentiable_products():
    x = torch.randn(5, 30, generator=_gen(5), requires_grad=True)
    w = torch.tensor([0.5, 0.0, 0.5, 0.0, 0.0])
    s = weighted_sum(w, x, [0, 1, 2, 3, 4])
    m = mix(torch.eye(5)[:2], x, [4, 0, 1, 2, 3])
    (s.sum() + m.sum()).backward()
    expected = torch.zeros(5, 30)
    expected[[0, 2]] += 0.5
    expected[[4, 0]] += 1.0
    torch.testing.assert_close(x.grad, expected)
    with torch.no_grad():  # no tracking: the in-place kernels
        assert not weighted_sum(w, x).requires_grad and not mix(torch.eye(5), x).requires_grad
