"""Hand-made Flower messages for unit tests of the strategy and the client mods (no network, no Ray)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from resam_flower import protocol as P

TaskIdentity.run_id = 1
TaskIdentity.task_id = 1
TaskIdentity.node_id = 0


def record(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def instruction(
    node: int, arrays: ArrayRecord, config: dict | None = None, kind: str = MessageType.TRAIN,
    from_resam: bool = True,
) -> Message:
    """A server's message; a train message from a RESAM server carries its mode (``from_resam``), as
    ``ResilientAveraging.configure_train`` sends it, unless ``config`` sets it."""
    config = dict(config or {})
    if from_resam and kind == MessageType.TRAIN:
        config.setdefault(P.MODE, "gradient")
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
    return Message(content=content, dst_node_id=node, message_type=kind)


def reply(to: Message, arrays: ArrayRecord | None, metrics: dict | None = None) -> Message:
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = arrays
    content["metrics"] = MetricRecord(metrics or {"num-examples": 1})
    return Message(content=content, reply_to=to)


def context(node: int = 1) -> Context:
    return Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})


class FakeGrid:
    """Just enough of flwr.serverapp.Grid for configure_train/configure_evaluate."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)
