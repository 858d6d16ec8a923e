"""What resam-flower needs to know about how Flower runs, in one place.

The project is tested on the Flower releases pinned in ``pyproject.toml``. Where it relies on how Flower
behaves rather than on its public API, the assumption is stated here and checked by
``tests/test_compat.py``, which fails loudly the day a Flower release changes it.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flwr.serverapp import Grid

__all__ = [
    "in_simulation",
    "run_simulation",
    "poll_faster",
    "stable_simulation_node_ids",
    "simulation_node_ids",
    "ray_backend_kept_alive",
    "POLL_INTERVAL_S",
]


def run_simulation(**kwargs: Any) -> None:
    """Flower's ``flwr.simulation.run_simulation`` (Ray backend), without its deprecation notice.

    Flower 1.42 marks it deprecated in favour of ``flwr run``'s simulation runtime; it is still the only
    in-process entry point, so the sweeps use it here and nowhere else. ``tests/test_compat.py`` fails the day
    it is gone.
    """
    from flwr.simulation import run_simulation as flower_run_simulation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flower_run_simulation(**kwargs)


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


# -- Flower's in-memory grid -------------------------------------------------------------------------
#: Reply polling interval of the in-memory grid in :func:`simulate` (Flower's default is 0.1 s).
POLL_INTERVAL_S = 0.01


def poll_faster(grid: Grid) -> None:
    """Make the simulation engine's in-memory grid poll for replies every :data:`POLL_INTERVAL_S`.

    It sleeps ``pull_interval`` (0.1 s) between polls: up to 0.1 s lost every round. Polling an in-process
    state every 10 ms costs nothing measurable. Other grids (no ``pull_interval``) are left as they are.
    """
    if isinstance(getattr(grid, "pull_interval", None), float):
        grid.pull_interval = min(grid.pull_interval, POLL_INTERVAL_S)



# -- node ids in simulation ---------------------------------------------------------------------------
_LOCAL = threading.local()


@contextmanager
def stable_simulation_node_ids(seed: int) -> Iterator[None]:
    """Within the block, Flower's in-memory link state gives nodes ids drawn from ``random.Random(seed)``.

    Flower's simulation draws node ids from ``os.urandom`` at each start, and the strategy samples nodes, and
    the simulated adversary chooses its nodes, by id. Two runs, or a run and its resumption, therefore pick
    different partitions unless ids are a function of the seed: node ``i`` (partition ``i``) then gets the
    ``i``-th id of a seeded stream in every run. Only node ids are affected (run and task ids stay random).
    """
    import flwr.server.superlink.linkstate.in_memory_linkstate as linkstate

    rng = random.Random(f"resam-flower/node-ids/{seed}")
    original_draw = linkstate.generate_rand_int_from_bytes
    original_create = linkstate.InMemoryLinkState.create_node

    def draw(num_bytes: int, exclude: set[int] | None = None) -> int:
        if not getattr(_LOCAL, "creating_node", False):
            return original_draw(num_bytes, exclude)
        while True:
            value = rng.getrandbits(8 * num_bytes)
            if value not in (exclude or ()):
                return value

    def create_node(self, *args: Any, **kwargs: Any) -> int:
        _LOCAL.creating_node = True
        try:
            return original_create(self, *args, **kwargs)
        finally:
            _LOCAL.creating_node = False

    linkstate.generate_rand_int_from_bytes = draw
    linkstate.InMemoryLinkState.create_node = create_node
    try:
        yield
    finally:
        linkstate.generate_rand_int_from_bytes = original_draw
        linkstate.InMemoryLinkState.create_node = original_create


def simulation_node_ids(num_nodes: int, seed: int) -> list[int]:
    """The node ids Flower's simulation gives nodes ``0 .. num_nodes - 1`` under
    :func:`~resam_flower.compat.stable_simulation_node_ids` ``(seed)``: drawn by Flower's own code."""
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    with stable_simulation_node_ids(seed):
        mapping = _register_nodes(num_nodes, factory)
    by_partition = {partition: node for node, partition in mapping.items()}
    return [by_partition[i] for i in range(num_nodes)]


# -- Flower's Ray backend ---------------------------------------------------------------------------------
class _DeferredShutdownRay(types.ModuleType):
    """Stand-in for the ``ray`` module inside Flower's Ray backend: everything but ``shutdown`` delegates."""

    def __init__(self, ray: types.ModuleType) -> None:
        super().__init__("ray")
        self._ray = ray

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ray, name)

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        """Deferred to the exit of :func:`shared_ray`."""


def _reusable_pool_type(base: type, idle: dict[str, list[Any]]) -> type:
    """A subclass of Flower's ``BasicActorPool`` that takes idle actors from ``idle`` and gives them back.

    Flower's ``ClientAppActor`` is generic (the ClientApp travels with each job), so an idle actor can serve
    the next simulation; what it caches (data partitions, models) is keyed by the experiment's config.
    """

    class ReusableActorPool(base):  # type: ignore[misc, valid-type]
        def __init__(self, actor_type: type, client_resources: dict, actor_kwargs: dict) -> None:
            super().__init__(actor_type, client_resources, actor_kwargs)
            self._reuse_key = repr((actor_type, sorted(client_resources.items()), actor_kwargs))

        def add_actors_to_pool(self, num_actors: int) -> None:
            cached = idle.setdefault(self._reuse_key, [])
            reused = [cached.pop() for _ in range(min(num_actors, len(cached)))]
            self.pool.extend(reused)
            self.num_actors += len(reused)
            super().add_actors_to_pool(num_actors - len(reused))

        def terminate_all_actors(self) -> None:
            if self._future_to_actor:  # a job is still out: do not hand these actors to the next run
                super().terminate_all_actors()
                return
            idle.setdefault(self._reuse_key, []).extend(self.pool)
            self.pool = []

    return ReusableActorPool



@contextlib.contextmanager
def ray_backend_kept_alive(reuse_actors: bool = True) -> Iterator[None]:
    """Within the block, Flower's Ray backend leaves Ray running (and, with ``reuse_actors``, its actors).

    Flower's backend calls ``ray.shutdown()`` at the end of every simulation and starts new actors for the
    next one. Here its module's ``ray`` defers ``shutdown`` and its ``BasicActorPool`` keeps idle actors for
    the next simulation; both are restored on exit and the idle actors terminated.
    """
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original_ray, original_pool = raybackend.ray, raybackend.BasicActorPool
    idle: dict[str, list[Any]] = {}
    raybackend.ray = _DeferredShutdownRay(original_ray)
    if reuse_actors:
        raybackend.BasicActorPool = _reusable_pool_type(original_pool, idle)
    try:
        yield
    finally:
        raybackend.ray, raybackend.BasicActorPool = original_ray, original_pool
        for actors in idle.values():
            for actor in actors:
                actor.terminate.remote()
