"""An in-process cell engine: the ServerApp, ClientApp and mods of Flower's Ray simulation, in one process.

Flower's simulation (:func:`resam_flower.simulation.simulate`) runs every ClientApp call in a Ray actor and
passes messages through its in-memory link state; for the small models of a sweep that machinery costs as
much as the training. :func:`simulate_in_process` runs the **same** experiment with no Ray and no network:

* the ServerApp is a :class:`flwr.serverapp.ServerApp` whose ``main`` calls
  :func:`resam_flower.app.server_app.run_experiment` (the strategy, the simulated adversary, checkpoints and
  results exactly as in :func:`~resam_flower.simulation.simulate`);
* the grid is :class:`InProcessGrid`, a :class:`flwr.serverapp.Grid` that hands each message to
  :func:`resam_flower.app.worker.make_client_app` (its mods included) in this process, with Flower's own
  ``Message``, ``Context`` and ``RecordDict`` objects, one ``Context`` per node that lives for the run (so
  ``momentum_mod`` keeps its momentum in ``context.state`` as under Ray);
* node ids are Flower's: they are drawn by Flower's in-memory link state (``_register_nodes`` of its
  simulation runtime) under :func:`resam_flower.compat.stable_simulation_node_ids`, so node ``i`` has the id
  it has in a Ray simulation with the same seed, and sampling and the adversary pick the same nodes;
* each message and reply crosses a pickle round trip, as it does between Ray's driver and an actor, so no
  ClientApp sees another's objects and the server never holds a reference into a node's state; replies
  carry the metadata Flower sets (``src_node_id``, ``dst_node_id``, ``reply_to_message_id``,
  ``message_type``, ``group_id``, a fresh ``message_id``), a ClientApp that raises answers with the error
  reply Flower's simulation runtime builds.

The final model is bit-identical to Flower's Ray simulation's for the same config and seed
(``tests/experiments/test_engine.py`` compares ``final_model_sha256``). Handlers run one intra-op thread
(:func:`resam_flower.app.worker._one_thread`), as in a Ray actor; the server side runs in the calling thread
with the process's thread setting.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from collections.abc import Iterable, Iterator
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from .. import protocol as P
from ..app.config import ExperimentConfig
from ..app.server_app import RoundCallback, run_experiment
from ..app.task import prepare_partitions
from ..app.worker import make_client_app
from ..compat import simulation_node_ids
from .grid import ENGINES

__all__ = ["InProcessGrid", "simulate_in_process", "simulation_node_ids", "ENGINES"]



def _transport(obj: Any) -> Any:
    """What crosses Ray's process boundary: a copy with no shared objects."""
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _error_reply(exc: Exception, msg: Message) -> Message:
    """The reply Flower's simulation runtime sends for a ClientApp that raised (same code and reason)."""
    from flwr.clientapp.client_app import ClientAppException
    from flwr.common.constant import ErrorCode

    wrapped = ClientAppException(str(exc))  # what Flower's Ray actor raises in the ClientApp's place
    reason = str(type(wrapped)) + ":<'" + str(wrapped) + "'>"
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


class InProcessGrid(Grid):
    """A Flower ``Grid`` whose nodes run ``app`` in this process (see the module docstring).

    Node ``i`` has partition ``i`` of ``num_nodes`` (node config ``partition-id``, ``num-partitions``) and
    accepts the roles of a simulated adversary (``resam-simulated-roles``). Messages are processed when
    pushed, in the order given; ``send_and_receive`` returns the replies that were ready before its
    ``timeout`` (a reply finished later is dropped, as Flower's grid stops waiting for it).
    """

    def __init__(self, app: ClientApp, num_nodes: int, *, seed: int, run: Run) -> None:
        self.app = app
        self._run = run
        self.node_ids = simulation_node_ids(num_nodes, seed)
        self.contexts = {
            node: Context(
                run_id=run.run_id,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": num_nodes, P.SIMULATED_ROLES: True},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.node_ids)
        }
        self._replies: dict[str, tuple[Message, float]] = {}  # instruction id -> (reply, time it was ready)

    # -- Grid -----------------------------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return set(self.node_ids)  # Flower's in-memory link state returns a set too

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            meta = msg.metadata
            if not (meta.reply_to_message_id == "" and meta.ttl > 0 and meta.delivered_at == ""):
                raise ValueError(f"Invalid message: {msg}")
            if meta.dst_node_id not in self.contexts:
                continue  # Flower's link state refuses messages to unknown nodes (no id, no reply)
            reply = self._deliver(msg)
            self._replies[meta.message_id] = (reply, time.time())
            ids.append(meta.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i)[0] for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        deadline = None if timeout is None else time.time() + timeout
        ids = list(self.push_messages(messages))
        replies = []
        for i in ids:
            reply, ready = self._replies.pop(i)
            if deadline is None or ready <= deadline:
                replies.append(reply)
        return replies

    # -- one node's work ------------------------------------------------------------------------------------
    def _deliver(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        received = _transport(msg)
        try:
            reply = self.app(message=received, context=self.contexts[node])
        except Exception as exc:  # noqa: BLE001 - Flower turns a ClientApp exception into an error reply
            logging.getLogger("flwr").error("ClientApp of node %s raised %r", node, exc)
            reply = _error_reply(exc, received)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return _transport(reply)


@contextlib.contextmanager
def _task_identity(run_id: int) -> Iterator[None]:
    """Flower's task identity of this process (what ``Message`` stamps on instructions), as
    ``run_simulation`` sets it for the ServerApp; restored on exit."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _new_run() -> Run:
    """A run as ``run_simulation`` creates one (random run and task ids, Flower's no-op federation)."""
    from flwr.common.constant import RUN_ID_NUM_BYTES, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.supercore.constant import NOOP_FEDERATION_ID

    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    return run


def simulate_in_process(
    run_config: dict[str, Any] | ExperimentConfig,
    *,
    on_round: RoundCallback | None = None,
    verbose: bool = False,
    client_app: ClientApp | None = None,
) -> dict:
    """Run the experiment described by ``run_config`` in this process; return its summary.

    The counterpart of :func:`resam_flower.simulation.simulate` (same results, same files, same
    ``on_round`` contract, :class:`RoundCallbackError` when the callback raises) without Ray.
    ``client_app`` defaults to :func:`~resam_flower.app.worker.make_client_app`.
    """
    cfg = (
        run_config
        if isinstance(run_config, ExperimentConfig)
        else ExperimentConfig.from_run_config(run_config)
    )
    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        out.update(run_experiment(grid, cfg, on_round=on_round))

    prepare_partitions(cfg)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run = _new_run()
    with _task_identity(run.run_id):
        grid = InProcessGrid(client_app or make_client_app(), cfg.num_clients, seed=cfg.seed, run=run)
        context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
        server(grid=grid, context=context)  # a RoundCallbackError of on_round propagates as is
    if not out:
        raise RuntimeError("the in-process simulation ended without a result")
    return out
