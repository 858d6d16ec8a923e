"""Shared fixtures: devices to run the pure-torch core on (CUDA tests skip cleanly without a GPU); torch's
intra-op thread count restored after every test; ``one_thread`` for tests that need a single thread."""

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


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Restore torch's intra-op thread count after each test.

    Code under test may set it and not restore it (the client worker sets one thread per Ray actor, and in
    an in-process run that is the test process): without this, results of later tests, e.g. float sums
    split over threads, would depend on the order in which tests run.
    """
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """One intra-op thread during the test: bit-identity at a fixed thread count (the worker sets 1), and tiny
    inputs on a busy 2-core machine (thread hand-offs cost milliseconds per op). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
