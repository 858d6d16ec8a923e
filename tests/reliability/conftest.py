"""Shared fixtures of the reliability tests."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def one_thread(one_thread):
    """tests/conftest.py's single thread (bit-identity holds at a fixed thread count; the worker and the child
    process use 1 too), with Flower's per-round logs quieted."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    yield
