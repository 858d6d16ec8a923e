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

Value = float | list[float]


def _number(val: object) -> float | None:
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
        return None
    return float(val)


def _value(val: object) -> tuple[int, Value] | None:
    """``(shape, value)``: shape -1 for a finite number, the length for a list of finite numbers; else
    ``None``."""
    if isinstance(val, list):
        items = [_number(v) for v in val]
        return None if not items or any(v is None for v in items) else (len(items), items)  # type: ignore
    number = _number(val)
    return None if number is None else (-1, number)


def median_metrics(
    messages: Iterable[Message],
    *,
    f: int = 0,
    allowed: Iterable[str] | None = None,
    max_keys: int = MAX_METRIC_KEYS,
    dropped: dict[str, str] | None = None,
) -> dict[str, Value]:
    """Median over replies of each metric: a finite number, or a list of them (element-wise, as FedAvg
    averages lists), reported by at least ``2f + 1`` replies.

    Unlike FedAvg's ``num-examples``-weighted average, ``f`` lying clients cannot move the median outside
    the range of the honest values, provided at least ``2f + 1`` replies report the key: then the honest ones
    are a majority. Keys fewer replies report are left out (so keys that only Byzantine nodes send never
    reach the round's metrics); so are lists of a length other than the one most replies report. ``allowed``
    restricts the keys to a declared set. Names longer than :data:`MAX_METRIC_KEY_LENGTH` or with
    non-printable characters are ignored, and at most ``max_keys`` keys are kept (most reported first, then
    by name). A reply counts once per key. ``dropped`` (if given) receives ``{key: why}`` for every
    printable key of sensible length that was left out.
    """
    keep = None if allowed is None else set(allowed)
    quorum = 2 * f + 1
    values: dict[str, dict[int, list[Value]]] = {}
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
                seen.add(key)
                parsed = _value(val)
                if parsed is None:
                    if dropped is not None:
                        dropped.setdefault(key, "not a finite number or a list of them")
                    continue
                values.setdefault(key, {}).setdefault(parsed[0], []).append(parsed[1])
    chosen: dict[str, list[Value]] = {}
    for key, by_shape in values.items():
        shape = max(by_shape, key=lambda s: (len(by_shape[s]), -s))  # the most reported shape
        reports = by_shape[shape]
        if len(reports) >= quorum:
            chosen[key] = reports
            if dropped is not None:
                dropped.pop(key, None)
        elif dropped is not None:
            lists = " (as lists of one length)" if shape >= 0 else ""
            dropped[key] = (f"reported by {len(reports)} replies{lists}, fewer than 2f + 1 = {quorum}: a "
                            "median of so few is not robust")
    ranked = sorted(chosen, key=lambda k: (-len(chosen[k]), k))
    if dropped is not None:
        for key in ranked[max_keys:]:
            dropped[key] = f"beyond the {max_keys} most reported keys"
    out: dict[str, Value] = {}
    for key in sorted(ranked[:max_keys]):
        reports = chosen[key]
        if isinstance(reports[0], list):
            out[key] = [float(statistics.median(column)) for column in zip(*reports, strict=True)]
        else:
            out[key] = float(statistics.median(reports))  # type: ignore[arg-type]
    return out
