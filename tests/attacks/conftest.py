"""Fixtures for the attack tests: honest clouds and the aggregation rules."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from resam_flower.aggregators import Aggregator, build


@pytest.fixture
def rule() -> Callable[[str, int], Aggregator]:
    """``rule(name, f)``: a built aggregation rule (a missing or broken rule module fails the test)."""

    def make(name: str, f: int) -> Aggregator:
        return build(name, f=f)

    return make


@pytest.fixture
def cloud() -> Callable[..., torch.Tensor]:
    """``cloud(h, d, seed)``: ``h`` honest vectors around a non-zero mean (1 + 0.1 * N(0, 1))."""

    def make(h: int = 10, d: int = 1000, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return 1.0 + 0.1 * torch.randn((h, d), generator=g, dtype=dtype)

    return make
