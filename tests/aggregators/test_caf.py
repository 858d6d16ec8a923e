"""CAF: hand-worked values, a d x d covariance reference, robustness, non-finite rows, parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.caf import CAF, weighted_top_eigen


def reference(x: np.ndarray, f: int) -> np.ndarray:
    """CAF as written, with explicit d x d weighted covariances (float64)."""
    n = x.shape[0]
    c = np.ones(n)
    best, best_mu, first = np.inf, None, True
    while first or c.sum() > n - 2 * f + 1e-9:
        first = False
        mu = (c[:, None] * x).sum(0) / c.sum()
        y = x - mu
        cov = (c[:, None, None] * y[:, :, None] * y[:, None, :]).sum(0) / c.sum()
        evals, evecs = np.linalg.eigh(cov)
        if evals[-1] < best:
            best, best_mu = evals[-1], mu
        tau = (y @ evecs[:, -1]) ** 2
        alive = c > 0
        if tau[alive].max() <= 0:
            break
        c = c * np.clip(1 - tau / tau[alive].max(), 0, None)
        c[(c <= 1e-9) | ~alive] = 0
    return best_mu


def test_byzfl_documentation_example():
    """Mean (4, 5, 6), top eigenvalue 18 along (1, 1, 1); both ends get tau = 27 = max and are removed."""
    caf = CAF(f=1)
    out = caf(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]))
    torch.testing.assert_close(out, torch.tensor([4.0, 5.0, 6.0]))
    assert caf.last_info["iterations"] == 1 and caf.last_info["eigenvalue"] == pytest.approx(18.0)


def test_hand_worked_one_outlier():
    """x = 0, 0, 0, 0, 3 (f = 1): mean 0.6, variance 1.44, tau = 0.36 (x4), 5.76: weights 15/16 on the
    zeros, 0 on the outlier, sum 3.75 > n - 2f = 3: next mean 0 with variance 0, which is returned."""
    caf = CAF(f=1)
    out = caf(torch.tensor([[0.0], [0.0], [0.0], [0.0], [3.0]], dtype=torch.float64))
    assert out.item() == pytest.approx(0.0, abs=1e-12)
    assert caf.last_info["iterations"] == 2
    assert caf.last_info["eigenvalue"] == pytest.approx(0.0, abs=1e-12)
    assert caf.last_info["weights"] == pytest.approx([0.25, 0.25, 0.25, 0.25, 0.0])


def test_weighted_top_eigen_against_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 4)) + 5.0
    c = rng.uniform(0.1, 1.0, size=7)
    mu = (c[:, None] * x).sum(0) / c.sum()
    y = x - mu
    cov = (c[:, None, None] * y[:, :, None] * y[:, None, :]).sum(0) / c.sum()
    evals, evecs = np.linalg.eigh(cov)
    g = torch.from_numpy(x @ x.T)
    for mat in (g, -0.5 * (g.diagonal()[:, None] + g.diagonal()[None, :] - 2 * g)):  # Gram or -D/2
        lam, tau = weighted_top_eigen(mat, torch.from_numpy(c))
        assert float(lam) == pytest.approx(evals[-1], rel=1e-10)
        np.testing.assert_allclose(tau.numpy(), (y @ evecs[:, -1]) ** 2, rtol=1e-8, atol=1e-10)


# Seeds 11 and 26 (f = 3) meet their smallest eigenvalue before the last iteration.
@pytest.mark.parametrize("seed", [0, 1, 2, 11, 26])
@pytest.mark.parametrize("f", [0, 1, 3])
def test_matches_reference(seed, f):
    rng = np.random.default_rng(seed)
    n, d = 2 * f + 4, 6
    x = rng.normal(size=(n, d))
    x[:f] += rng.normal(scale=5.0, size=(f, d))
    np.testing.assert_allclose(CAF(f=f)(torch.from_numpy(x)).numpy(), reference(x, f), rtol=1e-8, atol=1e-9)


def test_f_zero_is_the_mean():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(CAF(f=0)(x), x.mean(0))


def test_permutation_invariance():
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[:3] *= 10
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(CAF(f=3)(x[perm]), CAF(f=3)(x))


@pytest.mark.parametrize("value", [1e6, -1e6])
def test_far_rows_stay_out(value):
    g = torch.Generator().manual_seed(4)
    n, f = 20, 4
    honest = torch.rand(n - f, 5, generator=g, dtype=torch.float64)
    signs = torch.where(torch.rand(f, 5, generator=g) > 0.5, 1.0, -1.0).double()
    out = CAF(f=f)(torch.cat([honest, value * signs]))
    assert ((out >= honest.min(0).values) & (out <= honest.max(0).values)).all(), out


def test_nonfinite_rows():
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    bad = x.clone()
    bad[2, 1] = float("nan")
    caf = CAF(f=2)
    out = caf(bad)
    assert caf.last_info["nonfinite_rows"] == 1 and caf.last_info["weights"][2] == 0.0
    # One row fewer and f - 1: the rule on the finite rows (f = 1 of 6).
    torch.testing.assert_close(out, CAF(f=1)(x[[0, 1, 3, 4, 5, 6]]))
    bad[[0, 4]] = float("-inf")
    with pytest.raises(NonFiniteInputError, match="3 of 7 inputs are non-finite, more than f=2"):
        caf(bad)


def test_input_condition_and_parameters():
    with pytest.raises(ValueError, match="caf needs n > 2f"):
        CAF(f=2)(torch.zeros(4, 3))
    assert CAF(f=2).min_inputs() == 5
    with pytest.raises(ValueError, match="f must be >= 0, got -1"):
        CAF(f=-1)
    with pytest.raises(ValueError, match="takes no parameter"):
        build("caf(tau=1.0)", f=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(dtype, device):
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 50.0
    out = CAF(f=2)(x.to(device=device, dtype=dtype))
    assert out.dtype == dtype and out.device.type == device.type
    torch.testing.assert_close(out.cpu().double(), CAF(f=2)(x), rtol=1e-5, atol=1e-4)


def test_registry_and_kappa():
    caf = build("caf", f=2)
    assert isinstance(caf, CAF) and caf.spec == "caf" and caf.kappa(10, 2) is None
