"""Static clipping: hand-worked values, ByzFL parity, no copy when nothing is clipped, errors."""

from __future__ import annotations

import byzfl
import numpy as np
import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.clipping import Clipping


def test_hand_worked():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    pre = Clipping(c=1.0)
    out = pre(x)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0], [0.0, -1.0]]).double())
    assert pre.last_info == {"nonfinite_rows": 0, "clipped": 1}


def test_nothing_to_clip_returns_the_input_itself():
    x = torch.tensor([[0.1, 0.2], [0.3, 0.0]])
    assert Clipping(c=1.0)(x) is x


def test_matches_byzfl():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=2.0, size=(8, 5))
    theirs = byzfl.Clipping(c=2.0)(x.copy())
    np.testing.assert_allclose(Clipping(c=2.0)(torch.from_numpy(x)).numpy(), theirs, rtol=1e-14)


def test_norms_bounded_and_directions_kept():
    g = torch.Generator().manual_seed(1)
    x = 5 * torch.randn(30, 7, generator=g, dtype=torch.float64)
    out = Clipping(c=3.0)(x)
    norms = out.norm(dim=1)
    assert (norms <= 3.0 * (1 + 1e-12)).all()
    torch.testing.assert_close(out / norms[:, None], x / x.norm(dim=1, keepdim=True))
    small = x.norm(dim=1) <= 3.0
    assert torch.equal(out[small], x[small])


def test_permutation_equivariance_and_f_unchanged():
    x = 4 * torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    perm = torch.tensor([5, 2, 0, 1, 4, 3])
    pre = Clipping(f=2, c=2.0)
    assert torch.equal(pre(x[perm]), pre(x)[perm])
    assert pre.apply(x, 2)[1] == 2 and pre.output_shape(6, 2) == (6, 2)


def test_nonfinite_rows():
    x = 4 * torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    bad = x.clone()
    bad[1, 1] = float("nan")
    bad[3] = 1e200  # finite, but its squared norm overflows: certainly faulty, dropped too
    pre = Clipping(f=2, c=1.0)
    out, f = pre.apply(bad, 2)
    assert f == 0 and pre.last_info["nonfinite_rows"] == 2
    torch.testing.assert_close(out, Clipping(c=1.0)(x[[0, 2, 4, 5]]))
    bad[5] = float("-inf")
    with pytest.raises(NonFiniteInputError, match="3 of 6 inputs are non-finite, more than f=2"):
        pre(bad)


@pytest.mark.parametrize(
    ("c", "match"),
    [
        (0.0, "c must be > 0.0, got 0.0"),
        (-1.0, "c must be > 0.0, got -1.0"),
        (float("inf"), "c must be finite"),
        ("2", "c must be a number"),
    ],
)
def test_bad_parameters(c, match):
    with pytest.raises(ValueError, match=match):
        Clipping(c=c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(dtype, device):
    x = (10 * torch.randn(5, 4, generator=torch.Generator().manual_seed(4))).to(device=device, dtype=dtype)
    out = Clipping(c=1.0)(x)
    assert out.dtype == dtype and out.device.type == device.type
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5, dtype=dtype, device=device))


def test_registry():
    pipe = build("clipping(c=0.5)+mean", f=1)
    assert isinstance(pipe.pre[0], Clipping) and pipe.spec == "clipping(c=0.5)+mean"
