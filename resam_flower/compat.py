"""What resam-flower needs to know about how Flower runs, in one place.

The project is tested on the Flower releases pinned in ``pyproject.toml``. Where it relies on how Flower
behaves rather than on its public API, the assumption is stated here and checked by
``tests/test_compat.py``, which fails loudly the day a Flower release changes it.
"""

from __future__ import annotations

import sys

__all__ = ["in_simulation"]


def in_simulation() -> bool:
    """Whether this process runs ClientApps for Flower's Ray simulation engine.

    Flower's simulation runtime executes every ClientApp inside a Ray actor; a deployed SuperNode runs its
    ClientApp in a plain process (Ray is usually not even installed on a device). The check costs nothing
    where Ray was never imported.
    """
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        return bool(ray.is_initialized()) and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - any Ray without a runtime context is not a simulation worker
        return False
