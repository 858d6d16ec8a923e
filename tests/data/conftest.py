"""Every data test runs against an empty, private cache folder and empty per-process caches."""

from __future__ import annotations

import importlib

import pytest

from resam_flower.data import sources

# The package re-exports the function ``partition``, which hides the module of the same name.
partition_module = importlib.import_module("resam_flower.data.partition")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Point ``$RESAM_CACHE_DIR`` at a fresh folder and forget loaded splits (before and after)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESAM_CACHE_DIR", str(cache))
    sources._load_cached.cache_clear()
    partition_module._partition_cached.cache_clear()
    yield cache
    sources._load_cached.cache_clear()
    partition_module._partition_cached.cache_clear()
