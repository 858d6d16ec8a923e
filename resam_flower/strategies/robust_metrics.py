"""Aggregation of client-reported metrics that Byzantine clients can neither skew nor flood."""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import Message

__all__ = ["median_metrics", "quorum", "MAX_METRIC_KEYS", "MAX_METRIC_KEY_LENGTH"]

#: At most this many metric keys are reported per round (the most widely reported first).
MAX_METRIC_KEYS = 32
#: Longer metric names are ignored.
MAX_METRIC_KEY_LENGTH = 64

Value = float | list[float]


def _number(val: object) -> float | None:
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        return None
    try:
        number = float(val)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


def _value(val: object) -> tuple[int, Value] | None:
    """``(shape, value)``: shape -1 for a finite number, the length for a list of finite numbers; else
    ``None``."""
    if isinstance(val, list):
        items = [_number(v) for v in val]
        return None if not items or any(v is None for v in items) else (len(items), items)  # type: ignore
    number = _number(val)
    return None if number is None else (-1, number)


def _median(values: list[float]) -> float:
    """The median, computed without overflow (the mean of the two middle values of 1.7e308 and 1.7e308)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else ordered[mid - 1] / 2 + ordered[mid] / 2


def quorum(f: int) -> int:
    """Replies a metric needs for a robust median with ``f`` Byzantine nodes: ``2f + 1`` (honest majority)."""
    return 2 * f + 1


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
    by name). A reply counts once per key. ``dropped`` (if given) receives ``{key: why}`` for the keys (or
    the replies of a key) left out that more than ``f`` replies sent, so at least one honest node: keys
    fewer send may be an attacker's invention, and are not named.
    """
    keep = None if allowed is None else set(allowed)
    needed = quorum(f)
    values: dict[str, dict[int, list[Value]]] = {}
    invalid: dict[str, int] = {}
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
                    invalid[key] = invalid.get(key, 0) + 1
                    continue
                values.setdefault(key, {}).setdefault(parsed[0], []).append(parsed[1])
    notes: dict[str, str] = {}
    chosen: dict[str, list[Value]] = {}
    for key in {*values, *invalid}:
        by_shape = values.get(key, {})
        shape = max(by_shape, key=lambda s: (len(by_shape[s]), -s)) if by_shape else -1  # most reported
        reports = by_shape.get(shape, [])
        others = sum(len(v) for s, v in by_shape.items() if s != shape) + invalid.get(key, 0)
        if len(reports) >= needed:
            chosen[key] = reports
            if others:
                notes[key] = (f"{others} of its {len(reports) + others} replies left out (another length, or "
                              "not a finite number or a list of them)")
        else:
            lists = " (as lists of one length)" if shape >= 0 else ""
            bad = f" ({invalid[key]} more not finite numbers)" if invalid.get(key) else ""
            notes[key] = (f"reported by {len(reports)} replies{lists}{bad}, fewer than 2f + 1 = {needed}: a "
                          "median of so few is not robust")
    ranked = sorted(chosen, key=lambda k: (-len(chosen[k]), k))
    for key in ranked[max_keys:]:
        notes[key] = f"beyond the {max_keys} most reported keys"
    if dropped is not None:  # a key fewer than f + 1 replies sent may be an attacker's: not named
        reporters = {k: sum(len(v) for v in values.get(k, {}).values()) + invalid.get(k, 0) for k in notes}
        dropped.update({k: why for k, why in notes.items() if reporters[k] > f})
    out: dict[str, Value] = {}
    for key in sorted(ranked[:max_keys]):
        reports = chosen[key]
        if isinstance(reports[0], list):
            out[key] = [_median(list(column)) for column in zip(*reports, strict=True)]
        else:
            out[key] = _median(reports)  # type: ignore[arg-type]
    return out
