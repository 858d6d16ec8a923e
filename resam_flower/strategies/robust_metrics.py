"""Aggregation of client-reported metrics that Byzantine clients can neither skew nor flood."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from flwr.app import Message

__all__ = ["median_metrics", "MAX_METRIC_KEYS", "MAX_METRIC_KEY_LENGTH"]

#: At most this many metric keys are reported per round (the most widely reported first).
MAX_METRIC_KEYS = 32
#: Longer metric names are ignored.
MAX_METRIC_KEY_LENGTH = 64


def median_metrics(
    messages: Iterable[Message],
    *,
    quorum: int = 1,
    allowed: Iterable[str] | None = None,
    max_keys: int = MAX_METRIC_KEYS,
) -> dict[str, float]:
    """Median over replies of the finite numeric scalar metrics that at least ``quorum`` replies report.

    Unlike FedAvg's ``num-examples``-weighted average, one lying client cannot move a median far. With
    ``quorum = f + 1`` a key is reported only if at least one honest node sent it: keys that only Byzantine
    nodes send never reach the round's metrics. ``allowed`` restricts the keys to a declared set. Names
    longer than :data:`MAX_METRIC_KEY_LENGTH` or with non-printable characters are ignored, and at most
    ``max_keys`` keys are kept (most reported first, then by name). A reply counts once per key.
    """
    keep = None if allowed is None else set(allowed)
    values: dict[str, list[float]] = {}
    for msg in messages:
        seen: set[str] = set()
        try:
            records = list(msg.content.metric_records.values())
        except Exception:  # noqa: BLE001 - unreadable reply: nothing to count
            continue
        for rec in records:
            for key, val in rec.items():
                if key in seen or (keep is not None and key not in keep):
                    continue
                if len(key) > MAX_METRIC_KEY_LENGTH or not key.isprintable():
                    continue
                if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                    continue
                seen.add(key)
                values.setdefault(key, []).append(float(val))
    ranked = sorted((k for k, v in values.items() if len(v) >= quorum), key=lambda k: (-len(values[k]), k))
    return {k: float(statistics.median(values[k])) for k in sorted(ranked[:max_keys])}
