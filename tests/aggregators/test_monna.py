"""MoNNA: hand-worked example, ByzFL agreement, trusted index or vector, faulty rows, no implicit trust."""

from __future__ import annotations

import numpy as np
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
    import byzfl  # the [dev] extra: a missing peer is a failure, not a skip
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
        MoNNA(f=2, idx=0)(torch.zeros(4, 2))
    assert build("monna", f=1, idx=2).idx == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(dtype, device):
    x = torch.randn(7, 30, generator=_gen(6), dtype=dtype).to(device)
    out = MoNNA(f=2, idx=1)(x)
    assert out.dtype == dtype and out.device == x.device
    assert torch.allclose(out.double().cpu(), MoNNA(f=2, idx=1)(x.double().cpu()), atol=1e-5)


def _reference(trusted: np.ndarray, x: np.ndarray, f: int) -> np.ndarray:
    """Independent: the trusted vector and its n - f nearest inputs (Euclidean), averaged."""
    order = np.argsort(((x - trusted) ** 2).sum(axis=1), kind="stable")
    return np.vstack([trusted, x[order[: len(x) - f]]]).mean(axis=0)


def test_trust_is_never_implicit():
    with pytest.raises(ValueError, match="must be told which.*lowest id.*got neither"):
        MoNNA(f=1)
    with pytest.raises(ValueError, match="got both idx and trusted"):
        MoNNA(f=1, idx=0, trusted=torch.zeros(3))
    with pytest.raises(ValueError, match="must be told which"):
        build("monna", f=1)


def test_the_strategy_refuses_monna_without_a_trusted_input():
    from resam_flower.strategies import ResilientAveraging

    with pytest.raises(ValueError, match="server sorts them by node id"):
        ResilientAveraging("monna", num_byzantine=1, lr=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trusted_vector_against_a_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    x, t = rng.normal(size=(9, 6)), rng.normal(size=6)
    agg = MoNNA(f=3, trusted=torch.from_numpy(t))
    out = agg(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), _reference(t, x, 3), rtol=1e-12, atol=1e-12)
    nearest = np.argsort(((x - t) ** 2).sum(axis=1), kind="stable")[:6]
    assert agg.last_info["selected"] == sorted(nearest.tolist())
    assert agg.spec == "monna(trusted='vector')"


def test_one_huge_byzantine_row_at_index_0_cannot_move_it():
    rng = np.random.default_rng(7)
    honest = rng.normal(size=(6, 10))
    x = np.vstack([np.full(10, 1e17), honest])  # the node with the lowest id is Byzantine
    server = honest.mean(axis=0) + 0.1 * rng.normal(size=10)  # the server's own estimate
    out = MoNNA(f=1, trusted=torch.from_numpy(server))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, (server + honest.sum(axis=0)) / 7, rtol=1e-12)
    assert np.abs(out).max() < 10
    # what trusting row 0 does: the model goes where the Byzantine row is
    assert MoNNA(f=1, idx=0)(torch.from_numpy(x)).abs().min() > 1e15


def test_trusted_vector_sizes_faulty_rows_and_updates():
    rng = np.random.default_rng(3)
    x, t = rng.normal(size=(4, 5)), rng.normal(size=5)
    agg = MoNNA(f=2, trusted=torch.from_numpy(t))
    assert agg.min_inputs() == 4  # n + 1 > 2f
    np.testing.assert_allclose(agg(torch.from_numpy(x)).numpy(), _reference(t, x, 2), rtol=1e-12)
    with pytest.raises(ValueError, match=r"needs n > 2f \(idx\) or n \+ 1 > 2f.*n=3"):
        agg(torch.from_numpy(x[:3]))
    y = x.copy()
    y[2, 1] = np.nan  # dropped, and one less Byzantine row to expect among the rest
    keep = [0, 1, 3]
    np.testing.assert_allclose(agg(torch.from_numpy(y)).numpy(), _reference(t, x[keep], 1), rtol=1e-12)
    assert agg.last_info["nonfinite_rows"] == 1 and 2 not in agg.last_info["selected"]
    t2 = rng.normal(size=5)
    agg.set_trusted(torch.from_numpy(t2))
    np.testing.assert_allclose(agg(torch.from_numpy(x)).numpy(), _reference(t2, x, 2), rtol=1e-12)
    with pytest.raises(ValueError, match="trusted vector of dimension 5, inputs of 4"):
        agg(torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="1-D floating-point tensor, got a torch.float64 tensor of shape"):
        agg.set_trusted(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(NonFiniteInputError, match="trusted vector is non-finite"):
        agg.set_trusted(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="built with idx=0"):
        MoNNA(f=1, idx=0).set_trusted(torch.zeros(3))


def test_trusted_vector_keeps_the_inputs_dtype_and_device(device):
    x = torch.randn(7, 30, generator=_gen(8)).to(device)
    t = torch.randn(30, generator=_gen(9), dtype=torch.float64)
    out = MoNNA(f=3, trusted=t)(x)
    assert out.dtype == torch.float32 and out.device == x.device
    ref = _reference(t.numpy(), x.double().cpu().numpy(), 3)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-5, atol=1e-5)
