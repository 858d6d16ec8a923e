"""Every attack preserves the input's dtype and device and returns (f, d)."""

from __future__ import annotations

import pytest
import torch

from resam_flower.attacks import ATTACKS, build


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_dtype_device_shape(name, dtype, device):
    g = torch.Generator().manual_seed(0)
    honest = (1.0 + torch.randn((10, 64), generator=g, dtype=dtype)).to(device)
    attack = build(name, 3)
    out = attack(honest)
    assert out.shape == (3, 64) and out.dtype == dtype and out.device == honest.device
    assert attack(honest, f=1).shape == (1, 64)
    if name != "inf":
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_input_is_not_modified(name):
    honest = torch.randn((6, 5), generator=torch.Generator().manual_seed(1))
    before = honest.clone()
    build(name, 2)(honest)
    assert torch.equal(honest, before)
