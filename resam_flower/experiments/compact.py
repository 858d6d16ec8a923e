"""A sweep's results in three small files, from which every table and figure regenerates without rerunning.

A finished sweep folder holds one sub-folder per cell (``summary.json``, ``config.json``, a per-round
``metrics.csv`` of 20 columns, logs): megabytes per hundred cells, too much to commit. ``resam export``
writes the part the reports and figures read:

* ``config.json``: the run-config values every cell shares (``results-dir`` and ``run-name`` dropped);
* ``cells.csv``: one row per finished cell: ``cell`` (its folder name), the keys that vary across the
  sweep, then :data:`SUMMARY_FIELDS` of its ``summary.json`` and :data:`TIMING_FIELDS` of its
  ``timing.json``;
* ``rounds.csv``: ``cell, round`` and :data:`ROUND_FIELDS` for rounds ``1..10``, every fifth round and
  every round with a test accuracy (all rounds with ``every=1``); six significant digits.

:func:`load_compact` reads them back as :class:`~resam_flower.experiments.results.Run` objects with the
same config, summary, accuracy curve and mechanism series as the full folder, so ``resam report``,
``resam plot`` and ``resam claims`` accept either folder (:func:`~.results.load_runs` dispatches).
Values in ``cells.csv`` are read back as JSON where they parse (numbers, booleans), else as strings; a string
that would parse as something else (``"1e-3"``, ``"true"``) is written JSON-quoted, so it reads back as the
same string; an empty field reads back as ``None`` (a missing value, or an empty string where the key's
default is empty too), and an empty string whose key has another default (``attack = ""``) is written ``""``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

from .._files import atomic_open
from .results import BOOKKEEPING, Run, _json_object, finished_ok, load_cells, report_left_out, varying_keys

__all__ = ["SUMMARY_FIELDS", "TIMING_FIELDS", "ROUND_FIELDS", "export_compact", "load_compact", "is_compact",
           "exported_cells"]

#: Fields of ``summary.json`` kept per cell.
SUMMARY_FIELDS = (
    "final_test_accuracy",
    "best_test_accuracy",
    "initial_test_accuracy",
    "final_test_loss",
    "rounds",
    "skipped_rounds",
    "excluded_replies",
    "status",
    "wall_time_s",
    "final_model_sha256",
    "code",
)
#: Fields of ``timing.json`` kept per cell (the report's timing lines).
TIMING_FIELDS = ("total_s", "startup_s", "round_s")
#: Columns of ``metrics.csv`` kept per round (the accuracy curve and the mechanism figures).
ROUND_FIELDS = ("test-accuracy", "honest-spread-max", "honest-mean-norm", "aggregation-error")
CELLS, ROUNDS, CONFIG = "cells.csv", "rounds.csv", "config.json"


def is_compact(directory: str | Path) -> bool:
    """Whether ``directory`` holds an exported sweep (``cells.csv`` and ``config.json``)."""
    directory = Path(directory)
    return (directory / CELLS).is_file() and (directory / CONFIG).is_file()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (bool, int)):
        return json.dumps(value)
    text = str(value)
    if text and _parse(text) != text:  # a string that would read back as a number, boolean or list: quoted
        return json.dumps(text)
    return text


def _fmt_config(key: str, value: Any, defaults: dict[str, Any]) -> str:
    """A config value's field: as :func:`_fmt`, except an empty string for a key whose default is not empty
    (``attack = ""``, no attack, against the default ``alie``), which is written ``""`` so that it does not
    read back as "not set", i.e. as the default."""
    if value == "" and defaults.get(key) not in ("", None):
        return '""'
    return _fmt(value)


def _run_defaults() -> dict[str, Any]:
    from ..app.config import ExperimentConfig

    return ExperimentConfig.from_run_config({}, validate=False).to_dict()


def _parse(text: str) -> Any:
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _short(text: str | None) -> str:
    """A metric value with six significant digits (empty stays empty, non-numbers verbatim)."""
    if text in (None, ""):
        return ""
    try:
        return f"{float(text):.6g}"
    except ValueError:
        return text


def _kept_round(rnd: int, row: dict[str, str], every: int) -> bool:
    return rnd <= 10 or rnd % every == 0 or row.get("test-accuracy", "") not in ("", None)


def export_compact(directory: str | Path, out_dir: str | Path, *, every: int = 5, force: bool = False,
                   runs: list[Run] | None = None, merge: bool = False,
                   planned: Collection[str] | None = None) -> tuple[int, int]:
    """Write ``config.json``, ``cells.csv`` and ``rounds.csv`` of the sweep in ``directory`` to ``out_dir``.

    Returns ``(cells, round rows)`` written. Idempotent: rerun it as cells finish; the files are replaced
    atomically, so a reader never sees half a file. ``runs``: the cells to write (default: every finished
    cell of ``directory``, :func:`~.results.load_cells`).

    An export already in ``out_dir`` is replaced only by one of the same sweep that keeps all its cells
    (the same cells, as many or more): :class:`ValueError` names the cells it would lose or change, unless
    ``force``.

    ``merge``: keep the cells of the export already in ``out_dir`` and add ``directory``'s (a sweep
    continued on another machine or a fresh clone, ``resam sweep --skip-exported``); a cell in both is
    taken from ``directory``, and must have the same config there. Every cell of the export must be one of
    the sweep's (``planned``: the names of the cells its file plans; default: those of
    ``<directory>/sweep.json``, the manifest ``resam sweep`` writes), and every round row it holds must be
    one this ``every`` keeps. Anything else raises :class:`ValueError` naming it: another sweep's export, a
    changed config, rows an ``every`` other than the export's would drop. The result is the export of all
    the cells together: the same files as one export of a folder that holds them all.
    """
    if every < 1:
        raise ValueError(f"every={every}: must be >= 1")
    directory = Path(directory)
    if is_compact(directory) and not any(directory.glob("*/summary.json")):
        raise ValueError(f"{directory} is already an export ({CONFIG}, {CELLS}): copy it, or export the "
                         "sweep's results folder")
    runs = load_cells(directory) if runs is None else runs
    if not runs:
        raise ValueError(f"no finished cell under {directory}: run `resam sweep` first")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    if merge and is_compact(out):
        runs = _merged(out, runs, directory, every, planned)
    elif not force and is_compact(out):
        _check_replace(out, runs)
    out.mkdir(parents=True, exist_ok=True)
    vary = varying_keys(runs)
    shared = {k: v for k, v in runs[0].config.items() if k not in vary and k not in BOOKKEEPING}
    with atomic_open(out / CONFIG, text=True, mode=0o644) as fh:
        fh.write(json.dumps(shared, indent=2, sort_keys=True) + "\n")
    header = ["cell", *vary, *SUMMARY_FIELDS, *TIMING_FIELDS]
    rows = 0
    with atomic_open(out / CELLS, text=True, mode=0o644, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        defaults = _run_defaults()
        for run in runs:
            fields = [_fmt(run.path.name), *(_fmt_config(k, run.config.get(k), defaults) for k in vary)]
            values = [run.summary.get(k) for k in SUMMARY_FIELDS] + [run.timing.get(k) for k in TIMING_FIELDS]
            writer.writerow(fields + [_fmt(v) for v in values])
    with atomic_open(out / ROUNDS, text=True, mode=0o644, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["cell", "round", *ROUND_FIELDS])
        for run in runs:  # metrics.csv of a results folder, or the rows of an export (merge)
            for row in run.metrics():
                rnd = int(float(row["round"]))
                if _kept_round(rnd, row, every):
                    writer.writerow([run.path.name, rnd, *(_short(row.get(k)) for k in ROUND_FIELDS)])
                    rows += 1
    return len(runs), rows


def _merged(out: Path, runs: list[Run], directory: Path, every: int, planned: Collection[str] | None
            ) -> list[Run]:
    """The cells of the export in ``out`` and ``runs`` together, by cell name (``runs`` win a tie); see
    :func:`export_compact` for what raises :class:`ValueError`."""
    from .results import differing_cells

    if planned is None:
        try:
            manifest = json.loads((directory / "sweep.json").read_text())
            planned = {cell["name"] for cell in manifest["cells"]}
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"--merge: {directory} has no readable sweep.json (the manifest `resam sweep` "
                             "writes) to tell which sweep it is: give the sweep's TOML file as TARGET"
                             ) from None
    new = {run.path.name: run for run in runs}
    old = load_compact(out)
    alien = [r.path.name for r in old if r.path.name not in planned]
    if alien:
        raise ValueError(f"--merge: {len(alien)} of the {len(old)} cells of {out} are not cells of this "
                         f"sweep (e.g. {alien[0]}): another sweep's export? give another --out")
    dropped = [(r.path.name, row["round"]) for r in old for row in r.metrics()
               if not _kept_round(int(float(row["round"])), row, every)]
    if dropped:
        name, rnd = dropped[0]
        raise ValueError(f"--merge: --every {every} would drop {len(dropped)} round row(s) of {out} (e.g. "
                         f"round {rnd} of {name}): give the --every it was exported with")
    changed = differing_cells((r.path.name, r.config, new[r.path.name].config)
                              for r in old if r.path.name in new)
    if changed:
        name, keys = next(iter(changed.items()))
        raise ValueError(f"--merge: {len(changed)} cell(s) of {out} have another config in the results "
                         f"(e.g. {name}: {', '.join(keys)}): another sweep's export? give another --out")
    kept = [r for r in old if r.path.name not in new]
    return sorted([*kept, *runs], key=lambda r: r.path.name)


def _check_replace(out: Path, runs: list[Run]) -> None:
    """:class:`ValueError` if the export in ``out`` has a cell that ``runs`` lacks or holds with another
    config (another sweep's export, or a smaller selection of this one)."""
    from .results import differing_cells

    new = {run.path.name: run.config for run in runs}
    old = load_compact(out)
    lost = [r.path.name for r in old if r.path.name not in new]
    changed = differing_cells((r.path.name, r.config, new[r.path.name]) for r in old if r.path.name in new)
    if not lost and not changed:
        return
    problems = []
    if changed:
        keys = sorted({k for ks in changed.values() for k in ks})
        problems.append(f"{len(changed)} of its cells have another config here ({', '.join(keys)}; e.g. "
                        f"{next(iter(changed))}): another sweep's export?")
    if lost:
        shown = ", ".join(lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
        problems.append(f"{len(lost)} of its {len(old)} cells are not in this export ({shown})")
    raise ValueError(f"{out} already holds an export: {'; '.join(problems)}; give another --out, --merge to "
                     "add these cells to it, or --force to replace it")


def exported_cells(directory: str | Path) -> list[str]:
    """The cell names of the export in ``directory`` (``[]`` when there is none)."""
    path = Path(directory) / CELLS
    if not is_compact(directory):
        return []
    with path.open(newline="") as fh:
        return [row["cell"] for row in csv.DictReader(fh)]


def load_compact(directory: str | Path) -> list[Run]:
    """The runs of an exported sweep (see the module docstring), sorted by cell name."""
    directory = Path(directory)
    shared = _json_object(directory / CONFIG)
    rounds: dict[str, list[dict[str, str]]] = {}
    if (directory / ROUNDS).is_file():
        with (directory / ROUNDS).open(newline="") as fh:
            for row in csv.DictReader(fh):
                rounds.setdefault(row["cell"], []).append(row)
    runs, left_out = [], []
    with (directory / CELLS).open(newline="") as fh:
        for row in csv.DictReader(fh):
            name = row.pop("cell")
            timing = {k: float(v) for k in TIMING_FIELDS if (v := row.pop(k, ""))}
            summary = {k: _parse(row.pop(k, "")) for k in SUMMARY_FIELDS}
            config = {**shared, **{k: _parse(v) for k, v in row.items()}}
            summary["config"] = config
            if not finished_ok(summary):
                left_out.append((name, f"status {summary.get('status')!r}"))
                continue
            per_round = rounds.get(name, [])
            first = summary["initial_test_accuracy"]
            curve = [] if first is None else [(0, first)]
            curve += [(int(r["round"]), float(r["test-accuracy"])) for r in per_round if r["test-accuracy"]]
            runs.append(Run(directory / name, config, summary, curve, timing, metric_rows=per_round))
    report_left_out(directory, left_out)
    return sorted(runs, key=lambda r: r.path.name)
