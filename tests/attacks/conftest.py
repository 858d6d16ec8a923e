"""Fixtures for the attack tests: honest clouds and the aggregation rules available right now."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from resam_flower.aggregators import Aggregator, build


@pytest.fixture
def rule() -> Callable[[str, int], Aggregator]:
    """``rule(name, f)``: a built aggregation rule, or skip the test if its module is not written yet."""

    def make(name: str, f: int) -> Aggregator:
        try:
            return build(name, f=f)
        except ImportError as exc:  # the aggregators are written concurrently by others
            pytest.skip(f"aggregator {name!r} not available yet ({exc})")

    return make


@pytest.fixture
def cloud() -> Callable[..., torch.Tensor]:
    """``cloud(h, d, seed)``: ``h`` honest vectors around a non-zero mean (1 + 0.1 * N(0, 1))."""

    def make(h: int = 10, d: int = 1000, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return 1.0 + 0.1 * torch.randn((h, d), generator=g, dtype=dtype)

    return make
