"""Aggregation of client-reported metrics that a Byzantine client cannot skew at will."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from flwr.app import Message

__all__ = ["median_metrics"]


def median_metrics(messages: Iterable[Message]) -> dict[str, float]:
    """Median over replies of every finite numeric scalar metric (``num-examples`` included).

    Unlike FedAvg's ``num-examples``-weighted average, one lying client cannot move a median far. Replies
    whose records cannot be read are skipped; non-numeric or non-finite values are ignored.
    """
    values: dict[str, list[float]] = {}
    for msg in messages:
        try:
            records = list(msg.content.metric_records.values())
        except Exception:  # noqa: BLE001 - unreadable reply: nothing to count
            continue
        for rec in records:
            for key, val in rec.items():
                if isinstance(val, bool) or not isinstance(val, (int, float)):
                    continue
                if math.isfinite(val):
                    values.setdefault(key, []).append(float(val))
    return {k: float(statistics.median(v)) for k, v in sorted(values.items())}
