"""DnC: hand-worked values, an SVD reference, seeded reproducibility and state, sampling, robustness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.dnc import DnC, outlier_scores, sample_coordinates


def reference(x: torch.Tensor, f: int, c: float) -> torch.Tensor:
    """DnC on all coordinates with an explicit SVD (float64)."""
    y = x.double() - x.double().mean(0)
    v = torch.linalg.svd(y, full_matrices=False).Vh[0]
    scores = (y @ v) ** 2
    good = torch.argsort(scores, stable=True)[: x.shape[0] - int(c * f)]
    return x.double()[good].mean(0)


def test_hand_worked_one_dimension():
    """d = 1: the score is the squared deviation from the mean; f = 1 removes 100."""
    dnc = DnC(f=1)
    out = dnc(torch.tensor([[0.0], [1.0], [2.0], [100.0]], dtype=torch.float64))
    assert out.item() == pytest.approx(1.0)
    assert dnc.last_info["removed"] == [3] and dnc.last_info["kept"] == [0, 1, 2]


def test_hand_worked_two_dimensions_with_c():
    """Outlier along (1, 1); c = 2 removes floor(2 * 1) = 2 inputs: the outlier and the next largest score."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2], [50.0, 50.0]], dtype=torch.float64)
    assert DnC(f=1)(x).tolist() == pytest.approx([0.3, 0.3])
    dnc = DnC(f=1, c=2.0)
    # Mean (10.24, 10.24), top direction ~ (1, 1)/sqrt2: projections -14.5 (0,0), -13.8 (1,0) and (0,1),
    # -14.2 (0.2,0.2), +56.2 (50,50); the two largest squares are the outlier's and (0,0)'s.
    assert dnc(x).tolist() == pytest.approx([0.4, 0.4])
    assert dnc.last_info["removed"] == [0, 4]


def test_outlier_scores_against_svd():
    x = torch.randn(9, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 7.0
    y = x - x.mean(0)
    v = torch.linalg.svd(y, full_matrices=False).Vh[0]
    torch.testing.assert_close(outlier_scores(x), (y @ v) ** 2)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("f", "c"), [(1, 1.0), (2, 1.0), (2, 1.5), (0, 1.0)])
def test_full_dimension_matches_reference(seed, f, c):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * f + 3, 6, generator=g, dtype=torch.float64)
    x[:f] += 4 * torch.randn(f, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(DnC(f=f, c=c, seed=seed)(x), reference(x, f, c))


def test_intersection_over_iterations_and_empty_fallback():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 400, generator=g, dtype=torch.float64)
    x[:2] += 3.0
    dnc = DnC(f=2, sub_dim=50, iterations=4, seed=3)
    out = dnc(x)
    assert dnc.last_info["removed"][:2] == [0, 1]
    torch.testing.assert_close(out, x[dnc.last_info["kept"]].mean(0))
    # 3 inputs, 2 removed per iteration, many iterations: an empty intersection falls back to the inputs
    # kept most often, never to an empty mean.
    y = torch.randn(5, 400, generator=g, dtype=torch.float64)
    dnc = DnC(f=2, sub_dim=20, iterations=30, seed=0)
    assert torch.isfinite(dnc(y)).all() and len(dnc.last_info["kept"]) >= 1


def test_seed_reproducibility_and_state_round_trip(tmp_path):
    x = torch.randn(11, 3000, generator=torch.Generator().manual_seed(2))
    xs = [x + i for i in range(4)]
    a, b = DnC(f=3, sub_dim=100, seed=7), DnC(f=3, sub_dim=100, seed=7)
    assert all(torch.equal(a(v), b(v)) for v in xs[:2])
    torch.save(a.state_dict(), tmp_path / "dnc.pt")
    c = DnC(f=3, sub_dim=100, seed=0)
    c.load_state_dict(torch.load(tmp_path / "dnc.pt"))
    assert c.seed == 7
    for v in xs[2:]:
        assert torch.equal(a(v), c(v))
    a.reset()
    assert torch.equal(a(xs[0]), DnC(f=3, sub_dim=100, seed=7)(xs[0]))


def test_global_seed_when_none():
    torch.manual_seed(123)
    s1 = DnC(f=1).seed
    torch.manual_seed(123)
    dnc = DnC(f=1)
    assert dnc.seed == s1 and dnc.spec == "dnc(sub_dim=10000, iterations=5, c=1.0)"
    assert dnc.state_dict()["seed"] == s1


def test_permutation_invariance_with_the_same_seed():
    """The coordinates drawn do not depend on the inputs' order, so the output does not either."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 2000, generator=g, dtype=torch.float64)
    x[:3] -= 2.0
    perm = torch.randperm(10, generator=g)
    torch.testing.assert_close(DnC(f=3, sub_dim=64, seed=1)(x[perm]), DnC(f=3, sub_dim=64, seed=1)(x))


@pytest.mark.parametrize(("d", "b"), [(1000, 10), (1000, 249), (1000, 250), (1000, 1000), (5, 3)])
def test_sample_coordinates_distinct_sorted_uniform(d, b):
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(d)
    draws = 400
    for _ in range(draws):
        idx = sample_coordinates(d, b, gen, torch.device("cpu"))
        assert idx.numel() == b and torch.equal(idx, torch.unique(idx)) and 0 <= idx.min() and idx.max() < d
        counts[idx] += 1
    expected = draws * b / d
    # Each coordinate is a binomial(draws, b/d) count: a loose 6-sigma band catches a biased sampler.
    sigma = (draws * (b / d) * (1 - b / d)) ** 0.5
    assert (counts - expected).abs().max() <= 6 * sigma + 1e-9


@pytest.mark.parametrize("value", [1e6, -1e6])
def test_far_rows_stay_out(value):
    g = torch.Generator().manual_seed(4)
    n, f = 20, 4
    honest = torch.rand(n - f, 50, generator=g, dtype=torch.float64)
    signs = torch.where(torch.rand(f, 50, generator=g) > 0.5, 1.0, -1.0).double()
    out = DnC(f=f, sub_dim=10, seed=0)(torch.cat([honest, value * signs]))
    assert ((out >= honest.min(0).values) & (out <= honest.max(0).values)).all(), out


def test_nonfinite_rows():
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    bad = x.clone()
    bad[6, 13] = float("nan")
    dnc = DnC(f=2, sub_dim=8, seed=9)
    out = dnc(bad)
    assert dnc.last_info["nonfinite_rows"] == 1
    torch.testing.assert_close(out, DnC(f=1, sub_dim=8, seed=9)(x[[0, 1, 2, 3, 4, 5, 7]]))
    bad[[0, 1]] = float("inf")
    with pytest.raises(NonFiniteInputError, match="3 of 8 inputs are non-finite, more than f=2"):
        dnc(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sub_dim": 0}, "sub_dim must be >= 1, got 0"),
        ({"iterations": 0}, "iterations must be >= 1, got 0"),
        ({"c": -0.5}, "c must be >= 0.0, got -0.5"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DnC(f=1, **kwargs)


def test_input_condition():
    assert DnC(f=2).min_inputs() == 5 and DnC(f=2, c=3.0).min_inputs() == 7
    with pytest.raises(ValueError, match=r"dnc needs n > max\(2f, floor\(c f\)\)"):
        DnC(f=2)(torch.zeros(4, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(dtype, device):
    x = torch.randn(9, 300, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 20.0
    dnc = DnC(f=2, sub_dim=300)
    out = dnc(x.to(device=device, dtype=dtype))
    assert out.dtype == dtype and out.device.type == device.type
    torch.testing.assert_close(out.cpu().double(), reference(x, 2, 1.0), rtol=1e-5, atol=1e-4)
    sub = DnC(f=2, sub_dim=30, seed=1)
    assert sub(x.to(device=device, dtype=dtype)).device.type == device.type
    assert sub.state_dict()["device"].startswith(device.type)


def test_registry_and_kappa():
    dnc = build("dnc(sub_dim=100, iterations=2, c=1.0, seed=4)", f=1)
    assert isinstance(dnc, DnC) and dnc.spec == "dnc(sub_dim=100, iterations=2, c=1.0, seed=4)"
    assert dnc.kappa(10, 1) is None
    np.testing.assert_equal(dnc.params(), {"sub_dim": 100, "iterations": 2, "c": 1.0, "seed": 4})
