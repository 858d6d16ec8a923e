"""Screening of untrusted train replies before they reach the aggregation rule.

Every reply is checked, none is trusted: a reply is kept only if it comes from a node sampled this
round, is the first from that node, carries no error, declares the kind of vector the server expects
(:func:`reply_kind_error`), holds exactly one ArrayRecord whose keys, shapes and dtypes match the global
model, and has only finite values. ``num-examples`` and any other client-reported metric are never used as
weights (a Byzantine client controls them). Reasons that quote a reply (its error text, its key names) are
escaped and shortened before they reach a log (:func:`resam_flower.flat.safe_text`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import ERROR, WARNING

import torch
from flwr.app import Message
from flwr.supercore import log

from ..flat import FlatSpec, safe_text
from ..protocol import REPLY_GRADIENT, REPLY_MOMENTUM, reply_flag

__all__ = ["Screened", "screen_replies", "reply_kind_error", "ExclusionLog"]

_FIX_GRADIENT = (
    "the reply holds trained weights, not a momentum: add momentum_mod(beta) to the ClientApp's mods "
    "(ClientApp(mods=[momentum_mod(0.9)])), or build the strategy with mode='model'"
)
_FIX_MODEL = (
    "the reply holds a momentum or gradient but the strategy is in model mode: build it with "
    "mode='gradient', or remove momentum_mod from the ClientApp"
)


def reply_kind_error(msg: Message, mode: str) -> str | None:
    """Why ``msg`` is not the kind of reply ``mode`` expects, or ``None``.

    ``gradient`` mode wants a momentum (``resam-momentum`` = 1, set by ``momentum_mod``) or a plain
    gradient (``resam-gradient`` = 1, a worker without momentum); ``model`` mode wants trained weights
    (neither flag). A reply of the other kind would be silently misread (weights stepped as a gradient
    diverge at once), so it is excluded with a reason that says how to fix the app.
    """
    directional = reply_flag(msg, REPLY_MOMENTUM) or reply_flag(msg, REPLY_GRADIENT)
    if mode == "gradient" and not directional:
        return f"kind: {_FIX_GRADIENT}"
    if mode == "model" and directional:
        return f"kind: {_FIX_MODEL}"
    return None


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
    *,
    mode: str | None = None,
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
    mode
        ``"gradient"`` or ``"model"``: also check the kind of each reply (:func:`reply_kind_error`).
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
        details.append((node, safe_text(reason)))

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
            kind = reply_kind_error(msg, mode) if mode is not None else None
        except Exception as exc:  # noqa: BLE001 - unreadable content is a bad reply
            reject(node, f"content: unreadable reply ({type(exc).__name__})")
            continue
        if kind is not None:
            reject(node, kind)
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


class ExclusionLog:
    """Logs excluded replies: the first of each kind in full, as an error (it says how to fix the app), then
    one short warning line each, so that a misconfigured federation is explained once, not every round."""

    def __init__(self) -> None:
        self.told: set[str] = set()

    def __call__(self, details: list[tuple[int | None, str]]) -> None:
        for node, reason in details:
            category = reason.split(":", 1)[0]
            if category not in self.told:
                self.told.add(category)
                log(ERROR, "aggregate_train: reply from node %s excluded: %s", node, reason)
            else:
                log(WARNING, "aggregate_train: excluded reply from node %s: %s", node, reason[:120])
