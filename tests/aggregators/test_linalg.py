"""Gram matrix, pairwise distances and the precision guard of ``_linalg``."""

from __future__ import annotations

import contextlib

import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError
from resam_flower.aggregators._linalg import (
    drop_nonfinite,
    finite_rows,
    gram,
    pairwise_sq_distances,
    sq_distances,
    weighted_sum,
)


def _reference_d2(x: torch.Tensor) -> torch.Tensor:
    """Squared distances of the float64 copy, by explicit differences (no Gram cancellation)."""
    xd = x.double().cpu()
    return ((xd[:, None, :] - xd[None, :, :]) ** 2).sum(-1)


@contextlib.contextmanager
def _matmul_precision(mode: str):
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(mode)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def test_gram_and_sq_distances_match_explicit_differences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, generator=g, dtype=torch.float64)
    assert torch.allclose(gram(x), x @ x.T)
    assert torch.allclose(gram(x.float(), exact=True), x.float().double() @ x.float().double().T)
    d2 = sq_distances(gram(x))
    assert torch.allclose(d2, _reference_d2(x))
    assert torch.all(d2.diagonal() == 0)


def test_hand_worked_distances():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]])
    p = pairwise_sq_distances(x, 0, "t")
    expected = torch.tensor([[0.0, 25.0, 9.0], [25.0, 0.0, 16.0], [9.0, 16.0, 0.0]], dtype=torch.float64)
    assert torch.equal(p.d2, expected)
    assert p.method == "fast" and p.dropped == 0 and p.f == 0


def test_random_inputs_take_the_fast_path_and_are_accurate():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 20_000, generator=g)
    p = pairwise_sq_distances(x, 2, "t")
    assert p.method == "fast"
    ref = _reference_d2(x)
    off = ~torch.eye(10, dtype=torch.bool)
    assert ((p.d2 - ref).abs()[off] / ref[off]).max() < 1e-4


@pytest.mark.parametrize("spread", [1e-2, 1e-4, 1e-6])
def test_close_vectors_far_from_origin_trigger_the_guard(spread):
    # float32 Gram: |error| ~ 1e-6 * ||x||^2 = 1e-2 * d while distances are ~spread^2 * d.
    g = torch.Generator().manual_seed(2)
    d = 20_000
    x = 100.0 * torch.randn(d, generator=g) + spread * torch.randn(8, d, generator=g)
    naive = sq_distances((x @ x.T).double())
    p = pairwise_sq_distances(x, 2, "t")
    ref = _reference_d2(x)
    off = ~torch.eye(8, dtype=torch.bool)
    rel = ((p.d2 - ref).abs()[off] / ref[off]).max()
    assert p.method in ("centred", "exact")
    assert rel < 1e-4
    assert rel <= p.error  # the estimate bounds the real error
    # the naive float32 Gram really is unreliable here (the guard is not a no-op)
    assert ((naive - ref).abs()[off] / ref[off]).max() > 1e-2


def test_duplicates_far_from_origin_have_near_zero_distance():
    g = torch.Generator().manual_seed(3)
    d = 10_000
    x = 50.0 + torch.randn(7, d, generator=g)
    x[4] = x[1]
    x[6] = x[1]
    p = pairwise_sq_distances(x, 2, "t")
    honest_min = _reference_d2(x)[0, 1:4].min()
    assert p.d2[1, 4] <= 1e-6 * honest_min and p.d2[1, 6] <= 1e-6 * honest_min
    assert p.error <= 1e-2


def test_identical_rows_give_exact_zeros():
    x = torch.full((5, 1000), 123.456)
    p = pairwise_sq_distances(x, 1, "t")
    assert torch.all(p.d2 == 0)


def test_rtol_zero_forces_the_exact_path():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 300, generator=g)
    p = pairwise_sq_distances(x, 1, "t", rtol=0.0)
    assert p.method == "exact"
    assert torch.allclose(p.d2, _reference_d2(x), rtol=1e-12)


def test_reduced_precision_matmul_is_not_trusted():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 300, generator=g)
    with _matmul_precision("medium"):
        p = pairwise_sq_distances(x, 1, "t")
    assert p.method == "exact"
    assert torch.allclose(p.d2, _reference_d2(x), rtol=1e-12)


def test_nonfinite_rows_are_found_from_the_gram_diagonal():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 100, generator=g)
    x[1, 3] = float("nan")
    x[4, 0] = float("inf")
    p = pairwise_sq_distances(x, 2, "t")
    assert p.dropped == 2 and p.f == 0
    assert p.kept.tolist() == [0, 2, 3, 5]
    assert torch.equal(p.x, x[[0, 2, 3, 5]])
    assert torch.allclose(p.d2, _reference_d2(x[[0, 2, 3, 5]]), rtol=1e-5)


def test_overflowing_squared_norm_counts_as_nonfinite():
    x = torch.ones(4, 10)
    x[2] = 1e30  # finite float32 values, squared norm overflows
    p = pairwise_sq_distances(x, 1, "t")
    assert p.kept.tolist() == [0, 1, 3]


def test_too_many_nonfinite_rows_raise():
    x = torch.zeros(5, 3)
    x[0, 0] = x[1, 1] = float("nan")
    with pytest.raises(NonFiniteInputError, match="2 of 5 inputs are non-finite, more than f=1"):
        pairwise_sq_distances(x, 1, "t")
    with pytest.raises(NonFiniteInputError):
        drop_nonfinite(x, 1, finite_rows(x), "t")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_and_dtype(device, dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 64, generator=g, dtype=dtype).to(device)
    p = pairwise_sq_distances(x, 1, "t")
    assert p.d2.device == x.device and p.d2.dtype == torch.float64
    assert p.kept.device == x.device
    w = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    s = weighted_sum(w, x)
    assert s.dtype == dtype and s.device == x.device
    assert torch.allclose(s, 0.5 * (x[0] + x[1]))
    assert torch.allclose(p.d2.cpu(), _reference_d2(x), rtol=1e-4)
