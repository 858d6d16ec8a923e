"""Screening of untrusted train replies before they reach the aggregation rule.

Every reply is checked, none is trusted: a reply is kept only if it comes from a node sampled this
round, is the first from that node, carries no error, holds exactly one ArrayRecord whose keys,
shapes and dtypes match the global model, and has only finite values. ``num-examples`` and any other
client-reported metric are never used as weights (a Byzantine client controls them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from flwr.app import Message

from ..flat import FlatSpec

__all__ = ["Screened", "screen_replies"]


@dataclass
class Screened:
    """Outcome of screening one round's replies."""

    node_ids: list[int]  #: nodes whose reply was kept, in the order of ``vectors``' rows
    vectors: torch.Tensor  #: (n_valid, d)
    messages: list[Message]  #: kept replies (same order)
    excluded: Counter = field(default_factory=Counter)  #: reason category -> count
    details: list[tuple[int | None, str]] = field(default_factory=list)  #: (node id, full reason)

    @property
    def num_excluded(self) -> int:
        return sum(self.excluded.values())


def _node_of(msg: Message) -> int | None:
    try:
        return int(msg.metadata.src_node_id)
    except Exception:  # noqa: BLE001 - a malformed message has no trustworthy sender
        return None


def screen_replies(
    replies: Iterable[Message],
    spec: FlatSpec,
    expected_nodes: set[int] | None,
    dtype: torch.dtype = torch.float32,
) -> Screened:
    """Validate ``replies`` against ``spec``; stack the valid ones into one ``(n, d)`` tensor.

    Parameters
    ----------
    replies
        The round's reply messages, in any order.
    spec
        Layout of the global model (keys, shapes, dtypes).
    expected_nodes
        Nodes sampled this round (``None`` accepts any node).
    dtype
        Dtype of the stacked vectors.
    """
    replies = list(replies)
    buf = torch.empty((len(replies), spec.dim), dtype=dtype)
    kept_nodes: list[int] = []
    kept_msgs: list[Message] = []
    seen: set[int] = set()
    excluded: Counter = Counter()
    details: list[tuple[int | None, str]] = []

    def reject(node: int | None, reason: str) -> None:
        excluded[reason.split(":", 1)[0]] += 1
        details.append((node, reason))

    for msg in replies:
        node = _node_of(msg)
        if node is None:
            reject(None, "sender: message without a source node id")
            continue
        if expected_nodes is not None and node not in expected_nodes:
            reject(node, f"unexpected: node {node} was not sampled this round")
            continue
        if node in seen:
            reject(node, f"duplicate: second reply from node {node}")
            continue
        seen.add(node)
        try:
            if msg.has_error():
                reject(node, f"error: {msg.error.reason}")
                continue
            records = list(msg.content.array_records.values())
        except Exception as exc:  # noqa: BLE001 - unreadable content is a bad reply
            reject(node, f"content: unreadable reply ({type(exc).__name__})")
            continue
        if len(records) != 1:
            reject(node, f"records: expected one ArrayRecord, got {len(records)}")
            continue
        row = buf[len(kept_nodes)]
        vec, reason = spec.read(records[0], dtype=dtype, out=row)
        if vec is None:
            reject(node, reason or "invalid")
            continue
        kept_nodes.append(node)
        kept_msgs.append(msg)
    return Screened(kept_nodes, buf[: len(kept_nodes)], kept_msgs, excluded, details)
