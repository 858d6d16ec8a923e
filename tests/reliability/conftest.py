"""Shared fixtures of the reliability tests."""

from __future__ import annotations

import logging

import pytest
import torch


@pytest.fixture
def one_thread():
    """Bit-identity holds at a fixed intra-op thread count (the worker sets 1; so does the child process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(before)
