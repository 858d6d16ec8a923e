"""SMEA: hand-worked values, an exhaustive d x d covariance reference, kappa, limits, non-finite rows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.smea import SMEA, subset_top_eigenvalues


def reference(x: np.ndarray, f: int) -> tuple[np.ndarray, tuple[int, ...], float]:
    """Exhaustive search with explicit d x d covariances (float64)."""
    best = (np.inf, None)
    for s in itertools.combinations(range(x.shape[0]), x.shape[0] - f):
        y = x[list(s)] - x[list(s)].mean(0)
        lam = np.linalg.eigvalsh(y.T @ y / len(s))[-1]
        if lam < best[0] - 1e-12:
            best = (lam, s)
    return x[list(best[1])].mean(0), best[1], best[0]


def test_byzfl_documentation_example():
    """Pairs {0,1} and {1,2} tie at eigenvalue 27/4 (half distance squared); the first in order wins."""
    smea = SMEA(f=1)
    out = smea(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]))
    torch.testing.assert_close(out, torch.tensor([2.5, 3.5, 4.5]))
    assert smea.last_info["subset"] == [0, 1] and smea.last_info["eigenvalue"] == pytest.approx(6.75)
    assert smea.last_info["subsets"] == 3


def test_hand_worked_triangle():
    """(0,0), (2,0), (0,2): covariance [[8, -4], [-4, 8]] / 9, top eigenvalue 4/3; the far point is out."""
    smea = SMEA(f=1)
    out = smea(torch.tensor([[10.0, 10.0], [0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([2 / 3, 2 / 3], dtype=torch.float64))
    assert smea.last_info["subset"] == [1, 2, 3]
    assert smea.last_info["eigenvalue"] == pytest.approx(4 / 3)


def test_subset_eigenvalues_against_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 9)) + 3.0  # d > n: the m x m route must still give the d x d eigenvalue
    g = torch.from_numpy(x @ x.T)
    subsets = torch.tensor(list(itertools.combinations(range(6), 4)))
    expected = [np.linalg.eigvalsh(np.cov(x[list(s)].T, bias=True))[-1] for s in subsets.tolist()]
    np.testing.assert_allclose(subset_top_eigenvalues(g, subsets).numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "f"), [(5, 1), (7, 2), (9, 3), (6, 0)])
def test_matches_reference(seed, n, f):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[:f] += rng.normal(scale=3.0, size=(f, 4))
    smea = SMEA(f=f)
    out = smea(torch.from_numpy(x)).numpy()
    mean, subset, lam = reference(x, f)
    np.testing.assert_allclose(out, mean, rtol=1e-10, atol=1e-12)
    assert tuple(smea.last_info["subset"]) == subset
    assert smea.last_info["eigenvalue"] == pytest.approx(lam, rel=1e-9)


@pytest.mark.parametrize("kind", ["gauss-d1", "gauss-d2", "gauss-d40", "clusters", "duplicates", "line"])
def test_branch_and_bound_equals_exhaustive_search(kind, monkeypatch):
    import resam_flower.aggregators.smea as mod

    monkeypatch.setattr(mod, "CHUNK", 16)  # several growing batches
    rng = np.random.default_rng(len(kind))
    n, f = 11, 3
    d = {"gauss-d1": 1, "gauss-d2": 2}.get(kind, 40)
    x = rng.normal(size=(n, d))
    if kind == "clusters":
        x[: n // 2] += 5.0
    if kind == "duplicates":  # many exact ties
        x = np.repeat(rng.normal(size=(4, d)), 3, axis=0)[:n]
    if kind == "line":
        x = rng.normal(size=(n, 1)) * np.ones((1, d))
    g = torch.from_numpy(x @ x.T)
    subsets = mod._subsets(n, n - f)
    lam = subset_top_eigenvalues(g, subsets)
    first = int(torch.nonzero(lam <= lam.min() * (1 + 1e-12))[0])
    idx, val, evaluated = mod.search(g, subsets, rank=min(n - f - 1, d))
    assert idx == first and val == pytest.approx(float(lam.min()), rel=1e-12, abs=1e-300)
    assert 1 <= evaluated <= subsets.shape[0]


def test_high_dimension_prunes_most_subsets():
    x = torch.randn(20, 5000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[:4] += 3.0
    smea = SMEA(f=4)
    smea(x)
    assert smea.last_info["subsets"] == 4845 and smea.last_info["evaluated"] < 500
    assert smea.last_info["subset"] == list(range(4, 20))


def test_kappa_is_sqrt_f_over_n_minus_2f_and_holds():
    smea = SMEA(f=2)
    assert smea.kappa(7) == pytest.approx(math.sqrt(2 / 3))
    assert smea.kappa(4) is None and SMEA(f=0).kappa(5) == 0.0
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = np.concatenate([rng.normal(size=(5, 3)), rng.normal(scale=4.0, size=(2, 3))])
        out = smea(torch.from_numpy(x)).numpy()
        for s in itertools.combinations(range(7), 5):
            xs = x[list(s)]
            diam = max(np.linalg.norm(a - b) for a in xs for b in xs)
            assert np.linalg.norm(out - xs.mean(0)) <= smea.kappa(7) * diam * (1 + 1e-9)


def test_permutation_invariance_and_far_rows():
    g = torch.Generator().manual_seed(3)
    honest = torch.rand(8, 5, generator=g, dtype=torch.float64)
    x = torch.cat([honest, torch.tensor([[1e6] * 5, [-1e6] * 5], dtype=torch.float64)])
    out = SMEA(f=2)(x)
    assert ((out >= honest.min(0).values) & (out <= honest.max(0).values)).all(), out
    perm = torch.randperm(10, generator=g)
    torch.testing.assert_close(SMEA(f=2)(x[perm]), out)


def test_subset_limit_is_refused_with_the_count():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match=r"C\(20, 14\) = 38760 subsets, more than max_subsets=1000"):
        SMEA(f=6, max_subsets=1000)(x)
    assert torch.isfinite(SMEA(f=6, max_subsets=38760)(x)).all()


def test_nonfinite_rows():
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    bad = x.clone()
    bad[0] = float("inf")
    smea = SMEA(f=2)
    out = smea(bad)
    assert smea.last_info["nonfinite_rows"] == 1 and 0 not in smea.last_info["subset"]
    torch.testing.assert_close(out, SMEA(f=1)(x[1:]))
    bad[[3, 5], 1] = float("nan")
    with pytest.raises(NonFiniteInputError, match="3 of 7 inputs are non-finite, more than f=2"):
        smea(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_subsets": 0}, "max_subsets must be >= 1, got 0"), ({"f": -2}, "f must be >= 0, got -2")],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SMEA(**kwargs)


def test_input_condition():
    with pytest.raises(ValueError, match="smea needs n > 2f"):
        SMEA(f=2)(torch.zeros(4, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(dtype, device):
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 100.0
    out = SMEA(f=2)(x.to(device=device, dtype=dtype))
    assert out.dtype == dtype and out.device.type == device.type
    torch.testing.assert_close(out.cpu().double(), SMEA(f=2)(x), rtol=1e-5, atol=1e-4)


def test_registry():
    smea = build("smea(max_subsets=10)", f=1)
    assert isinstance(smea, SMEA) and smea.spec == "smea(max_subsets=10)"
