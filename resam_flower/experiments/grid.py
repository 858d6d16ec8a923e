"""Experiment grids: a TOML file in ``simulations/`` expanded into cells, one Flower simulation each.

File format (keys of ``[base]``, ``[grid]`` and ``[[include]]`` are the run-config keys of
:class:`~resam_flower.app.config.ExperimentConfig`, kebab-case)::

    # top-level (before any [table], as TOML requires): drop cells whose full config (the app's defaults
    # included) matches every key of one entry; an entry that drops no cell is an error
    exclude = [{aggregator = "mean", momentum = 0.0}]

    [sweep]
    name = "demo"                 # results go to <results>/<name>/<cell>/
    results = "results"           # optional root (default "results"; the CLI's --results overrides it)
    description = "..."           # optional
    engine = "inprocess"          # optional: "ray" or "inprocess" (see experiments.runner; CLI --engine)

    [base]                        # every cell starts from these values (the app's defaults fill the rest)
    dataset = "mnist"
    num-server-rounds = 60

    [grid]                        # Cartesian product of the lists (a scalar is a one-value list)
    aggregator = ["cwtm", "nnm+cwtm"]
    momentum = [0.0, 0.9]
    # a list of tables varies several keys together (zipped, not crossed):
    setting = [{num-clients = 13, num-byzantine = 3}, {num-clients = 17, num-byzantine = 4}]

    [[include]]                   # extra cells, each over [base] (lists inside are crossed too)
    attack = "none"
    momentum = [0.0, 0.9]

    [[include]]                   # `engine` picks a cell's engine (not a run-config key, not in its name):
    num-clients = 200             # Flower's Ray simulation for a cell with many clients
    engine = "ray"

The semantics of ``include``/``exclude`` are those of a CI build matrix (without ``[grid]``, the includes are
the cells; without either, ``[base]`` is the one cell). Each cell gets a name built from
the keys that vary across the sweep (``nnm_cwtm__alie__b0.9__s0``); it is its results folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..app.config import ExperimentConfig, check_run_config_key

__all__ = [
    "Cell", "Sweep", "load_sweep", "expand", "cell_name", "normalized_config", "full_config", "ENGINES",
]

#: Cell engines of a sweep: Flower's Ray simulation, or the in-process engine (:mod:`.engine`).
ENGINES = ("ray", "inprocess")
#: The per-cell key that picks a cell's engine (``[base]``, ``[grid]`` or ``[[include]]``).
CELL_ENGINE = "engine"

#: Keys shown first in cell names (others follow in sorted order), with their name prefix.
NAME_KEYS: dict[str, str] = {
    "dataset": "",
    "model": "",
    "partitioner": "",
    "alpha": "a",
    "num-clients": "n",
    "num-byzantine": "f",
    "aggregator": "",
    "attack": "",
    "attack-params": "",
    "momentum": "b",
    "lr": "lr",
    "batch-size": "bs",
    "seed": "s",
}
#: Keys that never enter the comparison of two configs: where results live and under what name (the cell's
#: folder) is not what ran.
IGNORED_KEYS = frozenset({"results-dir", "run-name"})


@dataclass(frozen=True)
class Cell:
    """One experiment of a sweep: its name (= results folder) and its full run config (kebab-case)."""

    name: str
    config: dict[str, Any]
    #: the values that vary across the sweep (what distinguishes this cell).
    varying: dict[str, Any] = field(default_factory=dict)
    #: the cell's ``engine`` key (``""``: the sweep's); engines give bit-identical results, so it is neither
    #: part of ``config`` nor of the name.
    engine: str = ""


@dataclass
class Sweep:
    """A parsed experiment file."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    results: str = "results"
    description: str = ""
    source: str = ""
    #: ``[sweep] engine``: ``"ray"``, ``"inprocess"`` or ``""`` (the runner's default).
    engine: str = ""

    def cells(self, results_root: str | Path | None = None) -> list[Cell]:
        """The expanded cells, with ``results-dir = <root>/<name>`` and ``run-name = <cell name>``."""
        return expand(self, results_root)

    def directory(self, results_root: str | Path | None = None) -> Path:
        """``<root>/<name>``: where this sweep's cell folders live."""
        return Path(results_root if results_root is not None else self.results) / self.name


def _as_list(key: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"grid key {key!r} has an empty list of values")
    return values


def _check_key(key: str, where: str) -> None:
    """A key a cell may set: a run-config key or :data:`CELL_ENGINE` (a typo would silently be ignored)."""
    if key != CELL_ENGINE:
        check_run_config_key(key, where)


def _product(grid: dict[str, Any], where: str = "[grid]") -> list[dict[str, Any]]:
    """Cartesian product; a list of tables contributes its tables' keys together (zipped group).

    Every key must be one a cell may set, and each key is set by one axis only: a group that sets a key
    another axis varies would silently override it (``where`` names the table in messages).
    """
    axes: list[list[dict[str, Any]]] = []
    owner: dict[str, str] = {}
    for key, value in grid.items():
        options = []
        for v in _as_list(key, value):
            if isinstance(v, dict):
                if key in ("include", "exclude"):
                    raise ValueError(
                        f"{where}: {key!r} is a list of tables inside {where}, so it would be read as a "
                        f"group of grid values; in TOML every key after a [table] header belongs to that "
                        f"table: put `{key} = [...]` at the top of the file, before [sweep]"
                    )
                if any(isinstance(x, (list, dict)) for x in v.values()):
                    raise ValueError(f"grid group {key!r}: values inside a group table must be scalars")
                for k in v:
                    _check_key(k, f"{where} group {key!r}")
                options.append(dict(v))
            else:
                _check_key(key, where)
                options.append({key: v})
        for k in dict.fromkeys(k for option in options for k in option):
            if k in owner and owner[k] != key:
                raise ValueError(f"{where}: {k!r} is set by both {owner[k]!r} and {key!r}; "
                                 f"one of them would silently override the other")
            owner[k] = key
        axes.append(options)
    out = []
    for combo in itertools.product(*axes):
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        out.append(merged)
    return out


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    text = text.replace("+", "_")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _key_order(key: str) -> tuple[int, str]:
    keys = list(NAME_KEYS)
    return (keys.index(key), key) if key in keys else (len(keys), key)


def cell_name(varying: dict[str, Any]) -> str:
    """``{"aggregator": "nnm+cwtm", "momentum": 0.9}`` -> ``"nnm_cwtm__b0.9"`` (stable, filesystem-safe)."""
    parts = []
    for key in sorted(varying, key=_key_order):
        if varying[key] in ("", None):
            continue
        prefix = NAME_KEYS.get(key, re.sub(r"[^a-z0-9]+", "", key.lower()) + "-")
        parts.append(prefix + _slug(varying[key]))
    return "__".join(parts) or "default"


def normalized_config(config: dict[str, Any], *, validate: bool = True) -> dict[str, Any]:
    """The config as the app records it (defaults filled, JSON types; validated unless ``validate=False``),
    minus :data:`IGNORED_KEYS`; a value ``None`` (an export's empty CSV field) is a key not set.

    Two configs describe the same experiment iff their normalised forms are equal: this is how a resumed
    sweep recognises a finished cell from its ``summary.json`` and how ``report``, ``progress`` and ``export``
    compare a cell with what a sweep file plans (:func:`~.results.comparable_config`).
    """
    values = {k: v for k, v in config.items() if v is not None and k not in IGNORED_KEYS}
    full = ExperimentConfig.from_run_config(values, validate=validate).to_dict()
    data = json.loads(json.dumps(full, sort_keys=True, default=str))
    return {k: v for k, v in data.items() if k not in IGNORED_KEYS}


def _matches(cell: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(k in cell and cell[k] == v for k, v in pattern.items())


def full_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the app's defaults filled in: what the cell runs, as its ``summary.json`` records it
    (unvalidated; an ``engine`` key is kept as it is)."""
    run = {k: v for k, v in config.items() if k != CELL_ENGINE}
    return {**ExperimentConfig.from_run_config(run, validate=False).to_dict(), **config}


def _full(sweep: Sweep, config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """:func:`full_config`; an error names the cell by its grid ``values``."""
    try:
        return full_config(config)
    except ValueError as exc:
        raise ValueError(f"sweep {sweep.name!r}, cell {values}: {exc}") from exc


def expand(sweep: Sweep, results_root: str | Path | None = None) -> list[Cell]:
    """Expand ``sweep`` into its cells (grid product, plus includes, minus excludes), validated at once.

    Raises :class:`ValueError` naming the cell if a combination is not a valid run config (e.g. a rule that
    needs ``n > 2f``), so a sweep fails before its first simulation, not in the middle. A mistake that would
    otherwise run another grid than the one written is an error too: a key that is no run-config key, a key
    set by two axes, an ``exclude`` entry that matches no cell (entries match a cell's full config, defaults
    included). Cells that run the same experiment (an include restating a grid cell, or a value equal to the
    default) are one cell, the first one written.
    """
    for key in sweep.base:
        _check_key(key, "[base]")
    # no grid: the includes are the cells (as in a CI build matrix), or [base] alone without any
    partial = _product(sweep.grid) if sweep.grid else [] if sweep.include else [{}]
    for i, extra in enumerate(sweep.include, 1):
        partial.extend(_product(extra, f"[[include]] #{i}"))
    for i, entry in enumerate(sweep.exclude, 1):
        for key in entry:  # what a cell runs, not where (`engine`)
            check_run_config_key(key, f"exclude entry #{i}")
    kept: list[dict[str, Any]] = []
    matched: set[int] = set()
    seen_configs: dict[str, int] = {}
    for p in partial:
        full = _full(sweep, {**sweep.base, **p}, p)
        hits = {i for i, ex in enumerate(sweep.exclude) if _matches(full, ex)}
        matched |= hits
        # the experiment it runs: its normal form (momentum = 0 and 0.0 are one experiment)
        identity = json.dumps(normalized_config({k: v for k, v in full.items() if k != CELL_ENGINE},
                                                validate=False), sort_keys=True)
        if hits:
            continue
        if identity in seen_configs:  # the same experiment again: one cell, the engine asked of either
            first = kept[seen_configs[identity]]
            mine, theirs = (str({**sweep.base, **q}.get(CELL_ENGINE) or "") for q in (p, first))
            if mine and theirs and mine != theirs:
                raise ValueError(f"sweep {sweep.name!r}: the cell {p} is asked on engine {mine!r} and on "
                                 f"{theirs!r}")
            if mine and not theirs:
                kept[seen_configs[identity]] = {**first, CELL_ENGINE: mine}
            continue
        seen_configs[identity] = len(kept)
        kept.append(p)
    for i, ex in enumerate(sweep.exclude):
        if i not in matched:
            raise ValueError(f"sweep {sweep.name!r}: exclude entry #{i + 1} {ex} matches no cell")
    unique = kept
    if not unique:
        raise ValueError(f"sweep {sweep.name!r} has no cells (everything excluded?)")
    keys = sorted({k for p in unique for k in p} - {CELL_ENGINE}, key=_key_order)
    fulls = [{**sweep.base, **p} for p in unique]
    engines = [str(f.pop(CELL_ENGINE, "") or "") for f in fulls]
    varying_keys = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in fulls}) > 1]
    directory = str(sweep.directory(results_root))
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for full, engine in zip(fulls, engines, strict=True):
        varying = {k: full[k] for k in varying_keys if k in full}
        name = cell_name(varying)
        if name in seen:
            digest = hashlib.sha1(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:8]
            name = f"{name}__{digest}"
        seen[name] = 1
        config = {**full, "results-dir": directory, "run-name": name}
        if engine and engine not in ENGINES:
            raise ValueError(f"sweep {sweep.name!r}, cell {name}: engine = {engine!r}; expected one of "
                             f"{', '.join(ENGINES)}")
        try:
            ExperimentConfig.from_run_config(config)
        except ValueError as exc:
            raise ValueError(f"sweep {sweep.name!r}, cell {name}: {exc}") from exc
        cells.append(Cell(name=name, config=config, varying=varying, engine=engine))
    return cells


def load_sweep(path: str | Path) -> Sweep:
    """Parse an experiment file (see the module docstring); unknown sections are an error."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an experiment file: give the sweep's .toml file, "
                         "e.g. simulations/lab_mnist.toml")
    if not path.is_file():
        raise ValueError(f"no experiment file {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    known = {"sweep", "base", "grid", "include", "exclude"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; expected {sorted(known)}")
    meta = data.get("sweep", {})
    for key, value in (("sweep", meta), ("base", data.get("base", {})), ("grid", data.get("grid", {}))):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: {key} must be a table ([{key}]), got {value!r}")
    sweep_keys = ("name", "results", "description", "engine")
    for key in meta:
        if key not in sweep_keys:
            raise ValueError(f"{path}: [sweep] {key!r} is not one of {', '.join(sweep_keys)}")
    name = str(meta.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"{path}: sweep name {name!r} must use letters, digits, '.', '_' or '-'")
    engine = str(meta.get("engine", ""))
    if engine and engine not in ENGINES:
        raise ValueError(f"{path}: [sweep] engine = {engine!r}; expected one of {', '.join(ENGINES)}")
    include = data.get("include", [])
    exclude = data.get("exclude", [])
    if isinstance(include, dict):
        include = [include]
    if isinstance(exclude, dict):
        exclude = [exclude]
    for key, entries in (("include", include), ("exclude", exclude)):
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"{path}: {key} must be a list of tables ({key} = [{{aggregator = \"mean\"}}]), "
                             f"got {entries!r}")
    return Sweep(
        name=name,
        base=dict(data.get("base", {})),
        grid=dict(data.get("grid", {})),
        include=list(include),
        exclude=list(exclude),
        results=str(meta.get("results", "results")),
        description=str(meta.get("description", "")),
        source=str(path),
        engine=engine,
    )
