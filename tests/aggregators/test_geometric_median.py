"""Geometric median (smoothed Weiszfeld in coefficient space): exact cases, optimality, faulty rows."""

from __future__ import annotations

import math

import byzfl
import numpy as np
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.geometric_median import GeometricMedian, GramGeometry


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _objective(x: torch.Tensor, z: torch.Tensor) -> float:
    return float((x.double() - z.double()).norm(dim=1).sum())


def test_fermat_point_of_a_right_triangle():
    # all angles < 120 degrees: the geometric median is the Fermat point, (t, t) with t = (3 - sqrt 3)/6
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    agg = GeometricMedian()
    t = (3 - math.sqrt(3)) / 6
    assert torch.allclose(agg(x), torch.tensor([t, t], dtype=torch.float64), atol=1e-7)
    assert agg.last_info["converged"] and agg.last_info["iterations"] > 1


def test_symmetric_and_collinear_cases():
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(GeometricMedian()(square), torch.tensor([1.0, 1.0], dtype=torch.float64))
    line = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)  # 1-d: the median
    assert GeometricMedian(f=1)(line).item() == pytest.approx(1.0, abs=1e-5)


def test_coefficient_space_distances_match_direct_ones():
    x = torch.randn(6, 9, generator=_gen(0), dtype=torch.float64)
    a = torch.rand(6, generator=_gen(1), dtype=torch.float64)
    a /= a.sum()
    b = torch.rand(6, generator=_gen(2), dtype=torch.float64)
    b /= b.sum()
    y = x - x[2]
    geometry = GramGeometry(y @ y.T)
    assert torch.allclose(geometry.distances(a)[0], (x - a @ x).norm(dim=1), atol=1e-10)
    assert geometry.step(a - b) == pytest.approx(float((a @ x - b @ x).norm()), rel=1e-9)


@pytest.mark.parametrize("big", [1e6, 1e12, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_rows_pull_with_unit_forces(big, dtype):
    # rows at 1e30 next to rows at 1 pull z by O(1): a distance-only iteration loses that pull entirely
    honest = torch.randn(7, 4, generator=_gen(11), dtype=torch.float64)
    x = torch.cat([honest, torch.full((2, 4), big, dtype=torch.float64)]).to(dtype)
    agg = GeometricMedian(f=2)
    out = agg(x).double()
    # float32 squares of 1e30 overflow: those rows count as non-finite and are dropped
    overflow = dtype == torch.float32 and big == 1e30
    assert agg.last_info["nonfinite_rows"] == (2 if overflow else 0)
    kept = x.double()[:7] if overflow else x.double()
    # optimality: the (sub)gradient of sum ||z - x_i|| vanishes at z
    diff = out - kept
    grad = (diff / diff.norm(dim=1, keepdim=True)).sum(0)
    assert grad.norm() < 1e-5
    assert agg.last_info["amplification"] < 10


@pytest.mark.parametrize("seed", range(3))
def test_output_minimises_the_sum_of_distances(seed):
    x = torch.randn(9, 5, generator=_gen(seed), dtype=torch.float64)
    z = GeometricMedian(f=2)(x)
    best = _objective(x, z)
    steps = _gen(seed + 100)  # one generator: 20 different directions
    for _ in range(20):
        step = 1e-3 * torch.randn(5, generator=steps, dtype=torch.float64)
        assert best <= _objective(x, z + step) + 1e-12
    assert best < _objective(x, x.mean(0))


def test_agrees_with_byzfl_run_to_convergence():
    x = torch.randn(8, 6, generator=_gen(3), dtype=torch.float64)
    ours = GeometricMedian(f=3, nu=1e-9)(x)
    theirs = byzfl.GeometricMedian(nu=1e-9, T=2000)(x).double()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_iteration_budget_is_reported():
    x = torch.randn(8, 6, generator=_gen(4), dtype=torch.float64)
    agg = GeometricMedian(f=3, max_iter=1, tol=0.0)
    agg(x)
    assert agg.last_info["iterations"] == 1 and agg.last_info["converged"] is False
    assert build("gm(max_iter=5)", f=1).spec == "gm(nu=1e-06, tol=1e-08, max_iter=5)"


def test_identical_inputs():
    x = torch.full((5, 3), 2.5)
    agg = GeometricMedian(f=2)
    assert torch.equal(agg(x), x[0]) and agg.last_info["converged"]


def test_permutation_invariance_and_translation_equivariance():
    x = torch.randn(9, 15, generator=_gen(5), dtype=torch.float64)
    agg = GeometricMedian(f=2)
    out = agg(x)
    assert torch.allclose(agg(x[torch.randperm(9, generator=_gen(6))]), out, atol=1e-9)
    shift = 1e3 * torch.randn(15, generator=_gen(7), dtype=torch.float64)
    assert torch.allclose(agg(x + shift), out + shift, atol=1e-7)


@pytest.mark.parametrize("bad", [1e6, -1e6, float("inf")])
def test_outliers_stay_out(bad):
    n, f = 11, 4
    honest = torch.rand(n - f, 20, generator=_gen(8))
    byz = torch.full((f, 20), bad)
    if bad != float("inf"):
        byz[::2] *= -1
    out = GeometricMedian(f=f)(torch.cat([byz, honest]))
    assert torch.all(out >= honest.min(0).values) and torch.all(out <= honest.max(0).values)


def test_nan_rows_dropped_up_to_f():
    x = torch.randn(9, 5, generator=_gen(9), dtype=torch.float64)
    y = x.clone()
    y[[0, 5], 2] = float("nan")
    agg = GeometricMedian(f=3)
    assert torch.allclose(agg(y), GeometricMedian(f=1)(x[[1, 2, 3, 4, 6, 7, 8]]))
    assert agg.last_info["nonfinite_rows"] == 2
    y[[1, 2], 2] = float("nan")
    with pytest.raises(NonFiniteInputError):
        agg(y)


def test_bad_configuration():
    with pytest.raises(ValueError, match="nu must be > 0.0"):
        GeometricMedian(nu=0.0)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        GeometricMedian(max_iter=0)
    with pytest.raises(ValueError, match=r"n > 2f.*f=3.*n=6"):
        GeometricMedian(f=3)(torch.zeros(6, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(dtype, device):
    x = torch.randn(7, 30, generator=_gen(10), dtype=dtype).to(device)
    out = GeometricMedian(f=2)(x)
    assert out.dtype == dtype and out.device == x.device
    assert torch.allclose(out.double().cpu(), GeometricMedian(f=2)(x.double().cpu()), atol=1e-5)


def _optimality_gap(x: np.ndarray, z: np.ndarray) -> float:
    """First-order condition of argmin_z sum ||x_i - z||, written out: at a point that is no input the unit
    vectors towards the inputs sum to 0; at an input held m times their sum over the others has norm <= m.
    Returns by how much the condition is violated (<= 0: z is the geometric median)."""
    d = np.linalg.norm(x - z, axis=1)
    at = d <= 1e-12
    pull = ((x[~at] - z) / d[~at, None]).sum(0)
    return float(np.linalg.norm(pull) - at.sum())


def test_a_median_at_an_input_is_returned_exactly_where_weiszfeld_would_creep():
    # the origin and three points at 120 degrees: their unit vectors cancel, so the origin is the median;
    # plain Weiszfeld from the mean is still 1e-3 away after 1,000 iterations
    angles = [0.0, 2 * np.pi / 3, 4 * np.pi / 3]
    arms = [[r * np.cos(t), r * np.sin(t)] for r, t in zip([1.0, 2.0, 3.0], angles, strict=True)]
    x = np.array([[0.0, 0.0], *arms])
    rule = build("gm", f=1)
    out = rule(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(out, [0.0, 0.0])
    assert rule.last_info["converged"] and rule.last_info["iterations"] == 0
    assert _optimality_gap(x, out) <= 0.0


@pytest.mark.parametrize("seed", range(12))
def test_the_result_satisfies_the_optimality_condition(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(3, 9)), int(rng.integers(1, 6))
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, size=d)
    if seed % 3 == 0:  # some inputs far away pull the median onto an input of the central cluster
        x[: n // 2] *= 100.0
    out = build("gm", f=0, tol=1e-14, max_iter=20_000)(torch.from_numpy(x)).numpy()
    assert _optimality_gap(x, out) <= 1e-5, (seed, _optimality_gap(x, out))
