"""What a Byzantine client runs on real devices: label flipping and corrupting its own update."""

from __future__ import annotations

import pytest
import torch

from resam_flower.attacks import corrupt_own_update, flip_labels
from resam_flower.attacks.client import client_side_attacks, is_data_attack


def test_flip_labels_maps_y_to_c_minus_1_minus_y_and_nothing_else():
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 3])
    out = flip_labels(y, 10)
    assert out.tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 6, 6]
    assert out.dtype == y.dtype and out.shape == y.shape
    assert y.tolist()[:3] == [0, 1, 2]  # input untouched
    assert torch.equal(flip_labels(out, 10), y)  # an involution
    # odd C: the middle class is a fixed point, all the others move
    assert flip_labels(torch.arange(5, dtype=torch.int32), 5).tolist() == [4, 3, 2, 1, 0]


def test_flip_labels_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must lie in \\[0, 10\\), got values in \\[0, 10\\]"):
        flip_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="\\[-1, 2\\]"):
        flip_labels(torch.tensor([-1, 2]), 10)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        flip_labels(torch.tensor([0]), 1)
    with pytest.raises(TypeError, match="integer labels"):
        flip_labels(torch.tensor([0.0, 1.0]), 2)
    assert flip_labels(torch.empty(0, dtype=torch.long), 3).shape == (0,)


def test_flip_labels_device(device):
    y = torch.tensor([[0, 2], [1, 1]], device=device)
    assert flip_labels(y, 3).device == y.device and flip_labels(y, 3).tolist() == [[2, 0], [1, 1]]


def test_client_side_attacks_are_exactly_the_non_omniscient_ones():
    assert client_side_attacks() == ["gaussian", "inf", "lf", "sf"]
    assert is_data_attack("label-flipping") and not is_data_attack("sf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_corrupt_own_update(dtype, device):
    own = torch.linspace(-1.0, 2.0, 12, dtype=dtype, device=device).reshape(3, 4)
    torch.testing.assert_close(corrupt_own_update("sf", own), -own)
    assert torch.isposinf(corrupt_own_update("inf", own)).all()
    assert corrupt_own_update("lf", own) is own
    noisy = corrupt_own_update("gaussian", own, sigma=0.1, seed=3)
    assert noisy.shape == own.shape and noisy.dtype == dtype and noisy.device == own.device
    assert 0 < (noisy - own).abs().max() < 1.0
    torch.testing.assert_close(noisy, corrupt_own_update("gaussian", own, sigma=0.1, seed=3))
    assert not torch.equal(noisy, corrupt_own_update("gaussian", own, sigma=0.1, seed=4))


def test_omniscient_attacks_cannot_run_on_a_client():
    with pytest.raises(ValueError, match="alie is omniscient"):
        corrupt_own_update("alie", torch.ones(3))
    with pytest.raises(ValueError, match="unknown attack"):
        corrupt_own_update("nope", torch.ones(3))
    with pytest.raises(ValueError, match="gaussian takes no parameter 'eps'"):
        corrupt_own_update("gaussian", torch.ones(3), eps=1.0)
