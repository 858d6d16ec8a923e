"""Shared fixtures: devices to run the pure-torch core on (CUDA tests skip cleanly without a GPU)."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each test using it runs on CPU and, where a GPU exists, on CUDA."""
    return torch.device(request.param)
