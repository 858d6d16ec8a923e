"""Plain mean (the non-robust baseline)."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import build
from resam_flower.aggregators.base import NonFiniteInputError
from resam_flower.aggregators.mean import Mean


def test_hand_worked_example():
    x = torch.tensor([[1.0, -2.0], [2.0, 0.0], [6.0, 5.0]])
    assert torch.equal(Mean()(x), torch.tensor([3.0, 1.0]))
    assert torch.equal(Mean()(x[:1]), x[0])


def test_permutation_invariant_and_translation_equivariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 100, generator=g, dtype=torch.float64)
    shift = torch.randn(100, generator=g, dtype=torch.float64)
    rule = Mean()
    torch.testing.assert_close(rule(x[torch.randperm(9, generator=g)]), rule(x))
    torch.testing.assert_close(rule(x + shift), rule(x) + shift)


def test_one_outlier_moves_it_arbitrarily():
    x = torch.zeros(10, 3)
    x[0] = 1e6
    assert torch.equal(Mean(f=1)(x), torch.full((3,), 1e5))


def test_nonfinite_rows_are_dropped_up_to_f():
    x = torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [3.0, 5.0], [float("inf"), 2.0]])
    rule = Mean(f=2)
    assert torch.equal(rule(x), torch.tensor([2.0, 3.0]))
    assert rule.last_info["nonfinite_rows"] == 2
    with pytest.raises(NonFiniteInputError, match="f=1"):
        Mean(f=1)(x)
    with pytest.raises(NonFiniteInputError):
        Mean(f=0)(x)


def test_bad_input_and_configuration_raise():
    with pytest.raises(ValueError, match="f must be >= 0"):
        Mean(f=-1)
    with pytest.raises(ValueError, match="shape"):
        Mean()(torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        Mean()(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="n=0"):
        Mean()(torch.zeros(0, 2))


def test_kappa():
    assert Mean(f=0).kappa(5) == 0.0
    assert Mean(f=0).kappa(5, d=100) == 0.0
    assert Mean(f=1).kappa(5) is None
    assert Mean(f=0).kappa(5, 1) is None


def test_dtype_and_device_preserved(device):
    for dtype in (torch.float32, torch.float64):
        x = torch.arange(12, dtype=dtype).reshape(4, 3).to(device)
        out = Mean()(x)
        assert out.dtype == dtype and out.device.type == device.type
        assert torch.equal(out.cpu(), torch.tensor([4.5, 5.5, 6.5], dtype=dtype))


def test_registry():
    assert isinstance(build("mean"), Mean)
    assert isinstance(build("average"), Mean)
    assert build("mean").spec == "mean"
