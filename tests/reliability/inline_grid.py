"""An in-process stand-in for Flower's Grid: runs a real ClientApp on each message, no Ray, no network.

Node ``i`` (partition ``i``) has node id ``1000 + i``; each node keeps its own ``Context`` (so
``momentum_mod`` keeps momentum in ``context.state`` as in Flower's simulation). ``fail(round, node)``
simulates a node that does not answer (crash, timeout: its reply is missing); ``error(round, node)`` one
whose ClientApp raised (an error reply, as Flower sends back). ``delay`` sleeps after each round's replies
(kill tests). Replies come back in reverse order, or shuffled with ``shuffle_seed``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

import tests.flower_helpers  # noqa: F401 - sets the TaskIdentity that hand-made messages need
from resam_flower import protocol as P

NodePredicate = Callable[[int, int], bool]


class InlineGrid:
    """``get_node_ids`` and ``send_and_receive`` on ``num_nodes`` in-process nodes running ``app``."""

    def __init__(
        self,
        app: ClientApp,
        num_nodes: int,
        *,
        fail: NodePredicate | None = None,
        error: NodePredicate | None = None,
        delay: float = 0.0,
        shuffle_seed: int | None = None,
    ) -> None:
        self.app = app
        self.ids = [1000 + i for i in range(num_nodes)]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                # an in-process stand-in for Flower's simulation: nodes accept simulated Byzantine roles
                node_config={"partition-id": i, "num-partitions": num_nodes, P.SIMULATED_ROLES: True},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.ids)
        }
        self.fail = fail
        self.error = error
        self.delay = delay
        self.calls = 0
        self.timeouts: list[float | None] = []  # the deadline of each send_and_receive call
        self._shuffle = None if shuffle_seed is None else random.Random(shuffle_seed)

    def get_node_ids(self) -> list[int]:
        return list(self.ids)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        self.timeouts.append(timeout)
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            rnd = int(next(iter(msg.content.config_records.values()), {}).get(P.SERVER_ROUND, 0))
            if self.fail is not None and self.fail(rnd, node):
                continue
            if self.error is not None and self.error(rnd, node):
                replies.append(Message(Error(code=0, reason="simulated node failure"), reply_to=msg))
                continue
            try:
                replies.append(self.app(msg, self.contexts[node]))
            except Exception as exc:  # noqa: BLE001 - Flower turns a ClientApp exception into an error reply
                replies.append(Message(Error(code=0, reason=repr(exc)), reply_to=msg))
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self._shuffle is not None:
            self._shuffle.shuffle(replies)
            return replies
        return replies[::-1]  # arrival order differs from send order: the strategy must not depend on it

    def reset_states(self) -> None:
        """Forget every node's in-memory state (what a killed simulation process loses)."""
        for ctx in self.contexts.values():
            ctx.state = RecordDict()
