"""Read a sweep's results back: one :class:`Run` per finished cell, and the groupings plots and reports use.

Accuracy of a run = ``final_test_accuracy`` of its ``summary.json`` (0..1). Over seeds: the mean. The
*worst case* of a configuration is the minimum over the attacks it was run against (the ``none`` attack,
i.e. no attack, is excluded from it and reported separately), each attack first averaged over seeds.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Run",
    "load_runs",
    "load_cells",
    "finished_ok",
    "report_left_out",
    "comparable_config",
    "config_differences",
    "differing_cells",
    "planned_runs",
    "combine",
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
    """Every ``<directory>/*/summary.json`` (one level down), sorted by folder name.

    A cell that did not finish is left out, and so is a cell whose summary cannot be read: a ``status``
    other than ``ok`` (a run that failed after writing its results, e.g. no progress), a ``summary.json``
    that is not a JSON object (as :func:`~.runner.is_finished`, which then reruns it). How many, which and
    why is printed on stderr (:func:`report_left_out`). An unreadable ``timing.json`` only loses the cell's
    timing (named on stderr too): the run itself finished.
    """
    directory = Path(directory)
    if directory.is_file():
        raise ValueError(f"{directory} is a file, not a folder")
    if not directory.is_dir():
        raise ValueError(f"no results folder {directory}: run `resam sweep` first")
    runs, left_out, untimed = [], [], []
    for summary_path in sorted(directory.glob("*/summary.json")):
        cell = summary_path.parent
        try:
            timing = _json_object(cell / "timing.json") if (cell / "timing.json").exists() else {}
        except (OSError, ValueError) as exc:
            timing = {}
            untimed.append((cell.name, f"unreadable: {exc}"))
        try:
            summary = _json_object(summary_path)
            config = summary.get("config", {})
            if not isinstance(config, dict):
                raise ValueError(f"{summary_path}: its config is not a JSON object")
        except (OSError, ValueError) as exc:
            left_out.append((cell.name, f"unreadable: {exc}"))
            continue
        if not finished_ok(summary):
            left_out.append((cell.name, f"status {summary.get('status')!r}"))
            continue
        runs.append(Run(cell, dict(config), summary, _curve(cell / "metrics.csv", summary), timing))
    report_left_out(directory, left_out)
    report_left_out(directory, untimed, what="timing.json of {n} cell(s) unreadable, their time not counted")
    return runs


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`ValueError` naming the file if it is not one."""
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def finished_ok(summary: dict[str, Any]) -> bool:
    """Whether a run's summary says it ran to the end: ``status`` ``ok`` (or no status: older results).

    The app writes ``summary.json`` with ``status = "failed: ..."`` before it raises when training made no
    progress; such a run's accuracy is that of an untrained model.
    """
    return summary.get("status") in (None, "ok")


def report_left_out(source: str | Path, left_out: list[tuple[str, str]], *, shown: int = 5,
                    what: str = "{n} cell(s) left out") -> None:
    """Print on stderr how many cells of ``source`` were left out (``what``, ``{n}`` their number), naming
    the first ``shown`` of ``left_out`` (``[(cell, why)]``) and why; nothing when none was."""
    if not left_out:
        return
    named = "; ".join(f"{name} ({why})" for name, why in left_out[:shown])
    more = f"; and {len(left_out) - shown} more" if len(left_out) > shown else ""
    print(f"[resam] {source}: {what.format(n=len(left_out))}: {named}{more}", file=sys.stderr)


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` in a form that compares across a results folder and its export: what
    :func:`~.grid.normalized_config` makes of it (unvalidated; the same form :func:`~.runner.is_finished`
    compares), or, for a config of wrong types, its values without :data:`BOOKKEEPING` keys and ``None``."""
    from .grid import normalized_config

    try:
        return normalized_config(config, validate=False)
    except (TypeError, ValueError):
        values = {k: v for k, v in config.items() if v is not None and k not in BOOKKEEPING}
        return json.loads(json.dumps(values, sort_keys=True, default=str))


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two configs (:func:`comparable_config`), sorted."""
    a, b = comparable_config(a), comparable_config(b)
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


def differing_cells(pairs: Iterable[tuple[str, dict[str, Any], dict[str, Any]]]) -> dict[str, list[str]]:
    """``{cell: keys}`` for the ``(cell, config, config)`` triples whose two configs differ
    (:func:`config_differences`), in the order given."""
    differ = {name: config_differences(a, b) for name, a, b in pairs}
    return {name: keys for name, keys in differ.items() if keys}


def planned_runs(runs: list[Run], cells: list, source: str | Path, plan: str | Path) -> list[Run]:
    """The runs of ``runs`` (read from ``source``) that the sweep file ``plan`` plans (``cells``, its
    :class:`~.grid.Cell` list): a cell of the same name whose config is the planned one
    (:func:`comparable_config`, the form :func:`~.runner.is_finished` compares). The others are left out
    with a line on stderr saying how many and why (not planned, or which keys differ)."""
    planned = {c.name: c.config for c in cells}
    kept, unplanned, differ = [], [], {}
    for run in runs:
        config = planned.get(run.path.name)
        if config is None:
            unplanned.append(run.path.name)
            continue
        keys = config_differences(run.config, config)
        if keys:
            differ[run.path.name] = keys
        else:
            kept.append(run)
    if unplanned:
        print(f"[resam] {len(unplanned)} cell(s) in {source} are not planned by {plan} (e.g. "
              f"{unplanned[0]}): left out", file=sys.stderr)
    if differ:
        keys = ", ".join(sorted({k for ks in differ.values() for k in ks}))
        print(f"[resam] {len(differ)} cell(s) in {source} differ from what {plan} plans ({keys}): left out",
              file=sys.stderr)
    return kept


def combine(sources: list[tuple[str | Path, list[Run]]]) -> list[Run]:
    """The runs of several sources (``[(folder, runs)]``) together; :class:`ValueError` when a cell is in two
    of them (the same config, :func:`comparable_config`: the same experiment): counted twice, it would double
    its seeds. Cells of one name with different configs (two sweeps of one name) are two experiments.
    """
    seen: dict[str, tuple[str | Path, Run]] = {}
    out = []
    for source, runs in sources:
        mine: dict[str, Run] = {}
        for run in runs:
            key = json.dumps(comparable_config(run.config), sort_keys=True)
            if key in seen:
                other, first = seen[key]
                alias = "" if first.path.name == run.path.name else f" (as {first.path.name})"
                raise ValueError(
                    f"cell {run.path.name} of {source} is also in {other}{alias}: give each cell once "
                    "(a sweep folder and its export are the same cells)")
            mine[key] = run
            out.append(run)
        seen.update({key: (source, run) for key, run in mine.items()})
    return out


def _reads_as(value: Any, text: str) -> bool:
    """``value`` written as ``text``: the same string, or the same number (``alpha=1`` selects 1.0); a
    missing value (``None``: an export's empty CSV field) reads as the empty string."""
    if str("" if value is None else value) == text:
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
    """The runs whose config matches ``where`` (:func:`config_matches`); all with none.

    A selection that leaves no run of a non-empty ``runs`` is a :class:`ValueError` saying why: a key no
    cell has (a typo), a value no cell has (with the values there), or values that no cell has together.
    """
    kept = [r for r in runs if config_matches(r.config, where)]
    if kept or not runs or not where:
        return kept
    reasons = []
    for key, text in where.items():
        present = sorted({"" if r.config.get(key) is None else str(r.config.get(key)) for r in runs if key in
                          r.config}, key=lambda v: (len(v), v))
        if not present:
            import difflib

            keys = sorted({k for r in runs for k in r.config} - BOOKKEEPING)
            close = difflib.get_close_matches(key, keys, n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            reasons.append(f"no cell has a key {key!r}{hint}")
        elif not any(_reads_as(r.config.get(key), text) for r in runs):
            shown = ", ".join(repr(v) for v in present[:12]) + (", ..." if len(present) > 12 else "")
            reasons.append(f"no cell has {key}={text} (values here: {shown})")
    if not reasons:
        reasons.append("each value is some cell's, but no cell has them all")
    selection = " ".join(f"{k}={v}" for k, v in where.items())
    raise ValueError(f"--where {selection} selects none of the {len(runs)} finished cells: "
                     f"{'; '.join(reasons)}")


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
