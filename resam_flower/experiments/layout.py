"""How a sweep's runs are laid out over figures: which keys split files, which only label, file suffixes.

A figure shows some keys on its axes (rule, β, f, α...); every other key that varies across the sweep
gives one file per value combination. A key whose value is a *function* of another key's value across
the runs (``num-clients`` zipped with ``num-byzantine`` by a ``setting = [{num-clients = 11,
num-byzantine = 1}, ...]`` grid entry) adds no information: it never splits files, it labels the values
of the key it depends on (``f=1 (n=11)``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from .grid import _slug
from .results import Run, row_keys

__all__ = [
    "LABELS",
    "PRIORITY",
    "label",
    "sorted_values",
    "split_runs",
    "dependents",
    "reduce_keys",
    "off_axes",
    "figure_keys",
    "file_suffix",
    "describe",
]

#: Short names of run-config keys in titles, axis labels and file names.
LABELS = {"num-byzantine": "f", "alpha": "α", "momentum": "β", "aggregator": "rule", "num-clients": "n"}
#: Keys that keep their place when two keys determine each other (f is shown, n labels it).
PRIORITY = ("aggregator", "momentum", "num-byzantine", "alpha")


def label(key: str) -> str:
    """Short name of ``key`` (``f`` for ``num-byzantine``...)."""
    return LABELS.get(key, key)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def sorted_values(values: set[Any]) -> list[Any]:
    """Config values in a stable order (numbers numerically, ``None`` last)."""
    return sorted(values, key=lambda v: (v is None, str(type(v)), v if v is not None else 0))


def split_runs(runs: list[Run], keys: list[str]) -> dict[tuple, list[Run]]:
    """Runs grouped by their values of ``keys`` (in a stable order)."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(run.config.get(k) for k in keys)].append(run)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def _determined(runs: list[Run], by: tuple[str, ...], other: str) -> bool:
    """Whether ``other``'s value is a function of the values of ``by`` across ``runs``."""
    seen: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        seen[_canon([run.config.get(k) for k in by])].add(_canon(run.config.get(other)))
    return all(len(v) == 1 for v in seen.values())


def dependents(runs: list[Run], key: str) -> list[str]:
    """Configuration keys (:func:`~.results.row_keys`, rule and β aside) whose value is a function of
    ``key``'s value across ``runs``: each value of ``key`` comes with a single value of theirs."""
    others = [o for o in row_keys(runs) if o not in (key, "aggregator", "momentum")]
    return [o for o in others if _determined(runs, (key,), o)]


def reduce_keys(runs: list[Run], keys: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``keys`` without those determined by another one kept (:data:`PRIORITY` keys are kept first).

    Returns the kept keys (in their given order) and, for each, the dropped keys it determines: splitting
    runs by the kept keys gives the same groups as splitting by all of ``keys``.
    """
    order = sorted(keys, key=lambda k: (PRIORITY.index(k) if k in PRIORITY else len(PRIORITY), keys.index(k)))
    tied: dict[str, list[str]] = {}
    dropped: set[str] = set()
    for key in order:
        if key in dropped:
            continue
        tied[key] = [k for k in dependents(runs, key) if k in keys and k not in tied and k not in dropped]
        dropped.update(tied[key])
    return [k for k in keys if k in tied], tied


def off_axes(runs: list[Run], keys: list[str], axes: tuple[str, ...] = ("aggregator", "momentum")
             ) -> tuple[list[str], dict[str, list[str]]]:
    """``keys`` minus those that a figure's axis keys determine, and ``{axis: the keys it determines}``.

    A learning rate tuned per β (``momentum = [{momentum = 0.9, lr = 2.0}, ...]``), or per rule and β, or the
    reference rule's own ``num-clients`` is no reason for a file of its own: it labels the β column
    (``β=0.9 (lr=2.0)``) or comes with the rule. A key determined by the axes together (one value per
    rule and β) is tied to the last axis. Keys no axis determines are returned in their order.
    """
    tied: dict[str, list[str]] = {}
    taken: set[str] = set()
    for axis in axes:
        tied[axis] = [k for k in dependents(runs, axis) if k in keys and k not in taken]
        taken.update(tied[axis])
    for key in keys:
        if key not in taken and key not in axes and _determined(runs, axes, key):
            tied[axes[-1]].append(key)
            taken.add(key)
    return [k for k in keys if k not in taken], tied


def figure_keys(runs: list[Run]) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """For a figure with rule and β on its axes: the keys that split files, the keys each of those
    determines (:func:`reduce_keys`), and the keys each axis determines (:func:`off_axes`)."""
    free, on_axes = off_axes(runs, [k for k in row_keys(runs) if k not in ("aggregator", "momentum")])
    rest, tied = reduce_keys(runs, free)
    return rest, tied, on_axes


def file_suffix(keys: list[str], values: tuple) -> str:
    """``__α1__f3``: the part of a file name that tells which values of ``keys`` the figure shows."""
    return "".join(f"__{label(k)}{_slug(v)}" for k, v in zip(keys, values, strict=True))


def describe(key: str, value: Any, tied: list[str], group: list[Run]) -> str:
    """``f=3 (n=13)``: a value of ``key`` and the values its ``tied`` keys take with it in ``group``."""
    text = f"{label(key)}={value}"
    extra = [f"{label(t)}={group[0].config.get(t)}" for t in tied if group]
    return f"{text} ({', '.join(extra)})" if extra else text
