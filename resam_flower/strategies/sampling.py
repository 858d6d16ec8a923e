"""Which nodes take part in a round: wait until enough are connected, then draw them with a seeded stream."""

from __future__ import annotations

import random
import time
from logging import INFO, WARNING
from typing import Any

from flwr.serverapp import Grid
from flwr.supercore import log

__all__ = ["NodeWaiter", "NodeSampler"]


class NodeWaiter:
    """Wait until ``count`` nodes are connected: at most ``timeout`` s, and ``stall`` s without a new node.

    A simulation registers all its nodes at once, so a shortfall there is final after ``stall`` seconds; on
    real devices every node that joins restarts the stall clock. A shortfall raises (``strict``: before the
    first round, where it is a setup mistake) or is logged and the nodes there are returned (later rounds of
    a deployment that lost nodes: the round goes on with them, and is skipped, saying why, if the rule
    cannot run on so few replies).
    """

    def __init__(self, timeout: float, stall: float) -> None:
        self.timeout, self.stall = timeout, stall

    def wait(self, grid: Grid, count: int, why: str, strict: bool = True) -> list[int]:
        start = last_change = time.monotonic()
        seen = -1
        while len(nodes := sorted(grid.get_node_ids())) < count:
            now = time.monotonic()
            if len(nodes) != seen:
                seen, last_change = len(nodes), now
            if (now - start >= self.timeout or now - last_change >= self.stall) and not strict:
                log(WARNING, "only %d nodes connected, %d wanted (%s) after waiting %.0f s: the round goes "
                    "on with them", len(nodes), count, why, now - start)
                return nodes
            if now - start >= self.timeout or now - last_change >= self.stall:
                raise RuntimeError(
                    f"only {len(nodes)} nodes connected, {count} needed ({why}); waited {now - start:.0f} s "
                    f"(node_wait_timeout={self.timeout:g}, node_stall_timeout={self.stall:g}). In a local "
                    "simulation start as many SuperNodes: "
                    f'flwr run . --federation-config "num-supernodes={count}"'
                    "; in a deployment start more SuperNodes, or lower the requirement"
                )
            log(INFO, "Waiting for nodes to connect: %d connected (%d needed).", len(nodes), count)
            time.sleep(max(min(1.0, self.stall, self.timeout - (now - start)), 0.0))
        return nodes


class NodeSampler:
    """Seeded sampling of ``max(int(N * fraction), minimum)`` of the ``N`` connected nodes (sorted ids).

    The stream and the population seen last are part of a checkpoint: after a resume, a different set of
    connected node ids is reported (sampling and the adversary's choice then refer to other nodes).
    """

    def __init__(self, seed: int, min_available: int, waiter: NodeWaiter) -> None:
        self.rng = random.Random(seed)
        self.min_available = min_available
        self.waiter = waiter
        self.population: list[int] | None = None  # every connected node at the latest train round
        self._restored: list[int] | None = None

    def sample(
        self, grid: Grid, fraction: float, minimum: int, need: int = 0, why: str = "", strict: bool = True
    ) -> tuple[list[int], list[int]]:
        """``(sampled, all connected)``, both sorted, once ``max(min_available, minimum, need)`` are there
        (``strict=False``: or as many as connected in the wait, see :class:`NodeWaiter`)."""
        count = max(self.min_available, minimum, need)
        all_nodes = self.waiter.wait(grid, count, why or f"min_available_nodes={self.min_available}", strict)
        size = min(len(all_nodes), max(int(len(all_nodes) * fraction), minimum))
        return sorted(self.rng.sample(all_nodes, size)), all_nodes

    def observe(self, all_nodes: list[int]) -> None:
        """Record the train round's population; after a restore, warn if it is not the checkpoint's."""
        self.population = all_nodes
        old, self._restored = self._restored, None
        if old is not None and list(old) != all_nodes:
            log(
                WARNING,
                "resumed run: the %d connected node ids differ from the %d of the checkpoint; sampling "
                "and the adversary's choice now refer to other nodes",
                len(all_nodes),
                len(old),
            )

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "population": self.population}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self._restored = state.get("population")
