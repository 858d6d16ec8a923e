"""Read a sweep's results back: one :class:`Run` per finished cell, and the groupings plots and reports use.

Accuracy of a run = ``final_test_accuracy`` of its ``summary.json`` (0..1). Over seeds: the mean. The
*worst case* of a configuration is the minimum over the attacks it was run against (the ``none`` attack,
i.e. no attack, is excluded from it and reported separately), each attack first averaged over seeds.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Run",
    "load_runs",
    "load_cells",
    "select",
    "varying_keys",
    "attack_of",
    "pivot",
    "mean",
    "worst_case",
    "row_keys",
    "NO_ATTACK",
]

#: Label of the no-attack column (attack ``none``/empty, or no Byzantine node).
NO_ATTACK = "none"
#: Keys that never define a configuration (bookkeeping).
BOOKKEEPING = frozenset({"results-dir", "run-name"})


@dataclass
class Run:
    """One finished cell: its folder, config, summary and test-accuracy curve ``[(round, accuracy)]``.

    ``metric_rows``: the cell's per-round rows when they were loaded from an exported sweep
    (:mod:`~resam_flower.experiments.compact`); ``None`` means read ``<path>/metrics.csv``.
    """

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    metric_rows: list[dict[str, str]] | None = None

    def metrics(self) -> list[dict[str, str]]:
        """Per-round metric rows (``[]`` when none were recorded)."""
        if self.metric_rows is not None:
            return self.metric_rows
        try:
            with (self.path / "metrics.csv").open(newline="") as fh:
                return list(csv.DictReader(fh))
        except OSError:
            return []

    @property
    def accuracy(self) -> float | None:
        """Final test accuracy (0..1)."""
        return self.summary.get("final_test_accuracy")


def attack_of(config: dict[str, Any]) -> str:
    """The attack a run actually faced (``none`` when there was no Byzantine node or no attack)."""
    attack = str(config.get("attack", "") or NO_ATTACK)
    if int(config.get("num-byzantine", 0) or 0) == 0 or attack == NO_ATTACK:
        return NO_ATTACK
    params = str(config.get("attack-params", "") or "").strip()
    return f"{attack}({params})" if params else attack


def _curve(path: Path, summary: dict[str, Any]) -> list[tuple[int, float]]:
    points: list[tuple[int, float]] = []
    if summary.get("initial_test_accuracy") is not None:
        points.append((0, float(summary["initial_test_accuracy"])))
    try:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                value = row.get("test-accuracy", "")
                if value not in ("", None):
                    points.append((int(float(row["round"])), float(value)))
    except OSError:
        pass
    return points


def load_runs(directory: str | Path) -> list[Run]:
    """The runs of a sweep folder: its cells (:func:`load_cells`), or an exported sweep's files
    (:func:`~resam_flower.experiments.compact.load_compact`) when it has no cell folder."""
    from .compact import is_compact, load_compact

    directory = Path(directory)
    if is_compact(directory) and not any(directory.glob("*/summary.json")):
        return load_compact(directory)
    return load_cells(directory)


def load_cells(directory: str | Path) -> list[Run]:
    """Every ``<directory>/*/summary.json`` (one level down), sorted by folder name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"no results folder {directory}: run `resam sweep` first")
    runs = []
    for summary_path in sorted(directory.glob("*/summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            continue
        cell = summary_path.parent
        timing = {}
        if (cell / "timing.json").exists():
            timing = json.loads((cell / "timing.json").read_text())
        config = dict(summary.get("config", {}))
        runs.append(Run(cell, config, summary, _curve(cell / "metrics.csv", summary), timing))
    return runs


def _reads_as(value: Any, text: str) -> bool:
    """``value`` written as ``text``: the same string, or the same number (``alpha=1`` selects 1.0)."""
    if str(value) == text:
        return True
    try:
        return not isinstance(value, bool) and float(value) == float(text)
    except (TypeError, ValueError):
        return False


def config_matches(config: dict[str, Any], where: dict[str, str] | None) -> bool:
    """Whether ``config``'s values read as ``where``'s texts (``{"attack": "alie"}``; ``{"alpha": "1"}``
    matches ``alpha = 1.0``); true with none. What ``--where`` means in every command."""
    return all(_reads_as(config.get(k), v) for k, v in (where or {}).items())


def select(runs: list[Run], where: dict[str, str] | None) -> list[Run]:
    """The runs whose config matches ``where`` (:func:`config_matches`); all with none."""
    return [r for r in runs if config_matches(r.config, where)]


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys whose value differs between runs (bookkeeping keys excluded), in a stable order."""
    keys = sorted({k for r in runs for k in r.config} - BOOKKEEPING)
    return [k for k in keys if len({json.dumps(r.config.get(k), default=str) for r in runs}) > 1]


def pivot(runs: list[Run], row_keys: list[str]) -> tuple[list[str], dict[tuple, dict[str, list[float]]]]:
    """Group accuracies: ``{row values: {attack: [accuracy per seed]}}`` and the sorted attack names.

    Rows are the distinct values of ``row_keys`` (keys absent from a config read as ``None``).
    """
    table: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    attacks: set[str] = set()
    for run in runs:
        if run.accuracy is None:
            continue
        row = tuple(run.config.get(k) for k in row_keys)
        attack = attack_of(run.config)
        attacks.add(attack)
        table[row][attack].append(float(run.accuracy))
    order = sorted(a for a in attacks if a != NO_ATTACK) + ([NO_ATTACK] if NO_ATTACK in attacks else [])
    return order, table


def mean(values: list[float]) -> float:
    """Mean (``nan`` for none)."""
    return statistics.fmean(values) if values else float("nan")


def worst_case(cells: dict[str, list[float]]) -> float:
    """Minimum over attacks (no-attack excluded) of the seed-mean accuracy; ``nan`` if no attack ran."""
    values = [mean(v) for a, v in cells.items() if a != NO_ATTACK and v]
    return min(values) if values else float("nan")


def row_keys(runs: list[Run]) -> list[str]:
    """Keys that define a configuration row: the varying ones except attack and seed (rule and β first)."""
    from .grid import _key_order

    skip = {"attack", "attack-params", "seed", "run-name", "results-dir"}
    keys = [k for k in varying_keys(runs) if k not in skip]
    front = [k for k in ("aggregator", "momentum") if k in keys]
    return front + sorted((k for k in keys if k not in front), key=_key_order)
