"""Centered clipping: hand-worked values, both iteration paths against a naive reference and ByzFL, state."""

from __future__ import annotations

import io

import byzfl
import numpy as np
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.centered_clipping import GRAM_FROM, CenteredClipping


def naive(x: torch.Tensor, v: torch.Tensor, tau: float, iterations: int) -> torch.Tensor:
    """The formula as written, in float64, with (n, d) temporaries."""
    x, v = x.to(torch.float64), v.to(torch.float64)
    for _ in range(iterations):
        diff = x - v
        norms = diff.norm(dim=1, keepdim=True)
        v = v + (diff * torch.clamp(tau / norms, max=1.0)).mean(0)
    return v


def t(*rows: list[float], dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def test_hand_worked_first_call_starts_at_zero():
    cc = CenteredClipping(tau=1.0)
    # (3, 4) has norm 5 -> clipped to (0.6, 0.8); (0.5, 0) is inside the radius.
    out = cc(t([3.0, 4.0], [0.5, 0.0]))
    torch.testing.assert_close(out, torch.tensor([0.55, 0.4], dtype=torch.float64))
    assert cc.last_info["clipped"] == 1
    # Second call starts at (0.55, 0.4): the input is at distance exactly 1 = tau, so it is reached.
    out = cc(t([0.55, 1.4]))
    torch.testing.assert_close(out, torch.tensor([0.55, 1.4], dtype=torch.float64))


@pytest.mark.parametrize(("iterations", "expected"), [(1, 1.0), (2, 2.0), (3, 3.0), (5, 4.0), (8, 4.0)])
def test_hand_worked_iterations_walk_by_tau(iterations, expected):
    """One input at (4, 0), tau = 1: each iteration moves one unit until it is reached (both paths)."""
    out = CenteredClipping(tau=1.0, iterations=iterations)(t([4.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor([expected, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("iterations", [1, 2, 3, GRAM_FROM, GRAM_FROM + 3])
@pytest.mark.parametrize("tau", [0.3, 2.0, 100.0])
def test_matches_naive_formula_over_calls(iterations, tau):
    g = torch.Generator().manual_seed(iterations)
    cc = CenteredClipping(f=2, tau=tau, iterations=iterations)
    v = torch.zeros(6, dtype=torch.float64)
    for call in range(4):
        x = torch.randn(9, 6, generator=g, dtype=torch.float64) * 2 + call
        v = naive(x, v, tau, iterations)
        torch.testing.assert_close(cc(x), v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("iterations", [1, GRAM_FROM])
def test_several_column_blocks(iterations):
    """d beyond one block of the blocked norms and Gram products (CPU block sizes)."""
    x = torch.randn(3, (1 << 17) + 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    cc = CenteredClipping(tau=50.0, iterations=iterations)
    v = naive(x, torch.zeros(x.shape[1], dtype=torch.float64), 50.0, iterations)
    torch.testing.assert_close(cc(x), v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cc(x + 1.0), naive(x + 1.0, v, 50.0, iterations), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("iterations", [1, 3, GRAM_FROM + 1])
def test_matches_byzfl(iterations):
    rng = np.random.default_rng(iterations)
    ours = CenteredClipping(tau=3.0, iterations=iterations)
    theirs = byzfl.CenteredClipping(L=iterations, tau=3.0)
    for _ in range(3):
        x = rng.normal(size=(10, 20)) * 2 + 1  # numpy float64: ByzFL casts torch input to float32
        np.testing.assert_allclose(ours(torch.from_numpy(x)).numpy(), theirs(x), rtol=1e-12, atol=1e-12)


def test_float32_far_from_origin_keeps_precision():
    g = torch.Generator().manual_seed(0)
    x = 1e3 + 1e-2 * torch.randn(8, 1000, generator=g, dtype=torch.float64)
    for iterations in (1, GRAM_FROM):
        cc = CenteredClipping(tau=0.05, iterations=iterations)
        cc.load_state_dict({"v": x.mean(0) + 0.01})
        ref = naive(x, x.mean(0) + 0.01, 0.05, iterations)
        torch.testing.assert_close(cc(x.float()).double(), ref, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("iterations", [1, GRAM_FROM])
def test_state_round_trip_continues_identically(iterations, tmp_path):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(7, 5, generator=g) for _ in range(4)]
    a = CenteredClipping(tau=0.5, iterations=iterations)
    a(xs[0])
    a(xs[1])
    path = tmp_path / "cc.pt"
    torch.save(a.state_dict(), path)
    b = CenteredClipping(tau=0.5, iterations=iterations)
    b.load_state_dict(torch.load(path))
    for x in xs[2:]:
        assert torch.equal(a(x), b(x))
    # The returned tensor is not the state: writing into it does not change the next call.
    out = a(xs[0])
    expected = b(xs[0])
    out.fill_(123.0)
    assert torch.equal(a.state_dict()["v"], expected)
    assert torch.equal(a(xs[1]), b(xs[1]))


def test_reset_and_pipeline_state():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cc = CenteredClipping(tau=0.1)
    first = cc(x)
    assert not torch.equal(cc(x), first)  # moved on from the previous aggregate
    cc.reset()
    assert cc.state_dict() == {"v": None}
    assert torch.equal(cc(x), first)
    pipe = build("clipping(c=10.0)+cc(tau=0.1)", f=1)
    pipe(x)
    buf = io.BytesIO()
    torch.save(pipe.state_dict(), buf)
    other = build("clipping(c=10.0)+cc(tau=0.1)", f=1)
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(pipe(x), other(x))


def test_dimension_change_raises_and_bad_state():
    cc = CenteredClipping()
    cc(torch.ones(3, 4))
    with pytest.raises(ValueError, match="dimension 4 but inputs have d=5"):
        cc(torch.ones(3, 5))
    with pytest.raises(ValueError, match="1-D tensor"):
        cc.load_state_dict({"v": torch.ones(2, 2)})


def test_robust_with_a_suitable_radius():
    """Honest rows in [0, 1]^5, f rows at +-1e6: with tau below the honest spread the output stays inside."""
    g = torch.Generator().manual_seed(3)
    n, f = 20, 4
    honest = torch.rand(n - f, 5, generator=g, dtype=torch.float64)
    for sign in (1.0, -1.0):
        x = torch.cat([honest, torch.full((f, 5), sign * 1e6, dtype=torch.float64)])
        out = CenteredClipping(f=f, tau=0.5, iterations=10)(x)
        assert ((out >= honest.min(0).values) & (out <= honest.max(0).values)).all(), out


@pytest.mark.parametrize("iterations", [1, GRAM_FROM])
def test_nonfinite_rows(iterations):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    bad = x.clone()
    bad[1] = float("nan")
    bad[4, 2] = float("inf")
    cc = CenteredClipping(f=2, tau=0.7, iterations=iterations)
    out = cc(bad)
    assert cc.last_info["nonfinite_rows"] == 2
    torch.testing.assert_close(out, naive(x[[0, 2, 3, 5]], torch.zeros(3), 0.7, iterations).to(x.dtype))
    with pytest.raises(NonFiniteInputError, match="3 of 6 inputs are non-finite, more than f=2"):
        CenteredClipping(f=2, iterations=iterations)(torch.where(torch.arange(6)[:, None] < 3, torch.nan, x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 0.0}, "tau must be > 0.0, got 0.0"),
        ({"tau": -1.0}, "tau must be > 0.0, got -1.0"),
        ({"tau": float("nan")}, "tau must be finite"),
        ({"iterations": 0}, "iterations must be >= 1, got 0"),
        ({"iterations": 1.5}, "iterations must be an integer"),
        ({"f": -1}, "f must be >= 0, got -1"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CenteredClipping(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("iterations", [1, GRAM_FROM])
def test_dtype_and_device(dtype, iterations, device):
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cc = CenteredClipping(tau=0.4, iterations=iterations)
    cpu = CenteredClipping(tau=0.4, iterations=iterations)
    for _ in range(2):
        out = cc(x.to(device=device, dtype=dtype))
        assert out.dtype == dtype and out.device.type == device.type
        torch.testing.assert_close(out.cpu().double(), cpu(x), rtol=1e-5, atol=1e-6)
    assert cc.state_dict()["v"].device.type == device.type


def test_registry_and_kappa():
    cc = build("cc(tau=2.5, iterations=3)", f=1)
    assert isinstance(cc, CenteredClipping) and cc.spec == "cc(tau=2.5, iterations=3)"
    assert build("centered-clipping", f=1).name == "cc"
    assert cc.kappa(10, 1) is None
