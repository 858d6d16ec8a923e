"""Worst-case heatmaps of ``resam plot``: final test accuracy, worst case over attacks, per rule.

Each cell is ``min`` over the attacks of the seed-mean final test accuracy (no-attack runs excluded; see
:func:`~resam_flower.experiments.results.worst_case`), in %.

* The sweep varies ``num-byzantine`` (f) and/or ``alpha`` (Dirichlet heterogeneity): ``heatmap_f*.png``
  (rule × f) and ``heatmap_α*.png`` (rule × α), one file per β (``__β0.99`` in the name). When both vary,
  each file has one panel per value of the other one (rule × f panels per α, rule × α panels per f).
  Keys zipped with f or α in the sweep (``num-clients`` in ``setting = [{num-clients = 11,
  num-byzantine = 1}, ...]``) label the columns or panels (``f=1 (n=11)``) instead of splitting files.
* Otherwise: ``heatmap_β*.png``, rule × β in one panel.

Any other varying key (dataset, lr...) gives one file per value combination (suffix in the file name).
Rules that were only run without attack (references such as the plain mean) have no row.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .layout import describe, file_suffix, label, off_axes, reduce_keys, sorted_values, split_runs  # noqa: E402
from .results import NO_ATTACK, Run, attack_of, row_keys, worst_case  # noqa: E402

__all__ = ["HEAT_KEYS", "plot_heatmaps", "worst_case_matrix"]

#: Keys that get their own heatmap (rule × key) when a sweep varies them.
HEAT_KEYS = ("num-byzantine", "alpha")


def worst_case_matrix(runs: list[Run], rules: list[Any], key: str, cols: list[Any]) -> list[list[float]]:
    """``matrix[i][j]``: worst-case accuracy (%) of rule ``rules[i]`` over the runs with ``key = cols[j]``
    (``nan`` where no attacked run exists)."""
    matrix = []
    for rule in rules:
        line = []
        for col in cols:
            cell: dict[str, list[float]] = defaultdict(list)
            for r in runs:
                if r.config.get("aggregator") == rule and r.config.get(key) == col and r.accuracy is not None:
                    cell[attack_of(r.config)].append(float(r.accuracy))
            line.append(100 * worst_case(cell))
        matrix.append(line)
    return matrix


def _draw(ax, matrix: list[list[float]], rows: list[Any], cols: list[str], xlabel: str, title: str):
    image = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if not math.isnan(value):
                color = "white" if value < 60 else "black"
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=color, fontsize=8)
    return image


def _tick(key: str, value: Any, tied: list[str], runs: list[Run]) -> str:
    """Column label: the value, then its tied keys' values on a second line (``1`` / ``n=11``)."""
    if not tied:
        return str(value)
    at = [r for r in runs if r.config.get(key) == value]
    return "\n".join([str(value)] + [f"{label(t)}={at[0].config.get(t)}" for t in tied if at])


def _figure(
    group: list[Run], col_key: str, col_tied: list[str], panel_key: str | None, panel_tied: list[str]
) -> Any:
    """One heatmap figure: rule × ``col_key``, one panel per ``panel_key`` value."""
    rules = sorted_values({r.config.get("aggregator") for r in group if attack_of(r.config) != NO_ATTACK})
    cols = sorted_values({r.config.get(col_key) for r in group})
    panels = sorted_values({r.config.get(panel_key) for r in group}) if panel_key else [None]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.1 * len(cols) * len(panels) + 3, 0.5 * len(rules) + 2.2), squeeze=False
    )
    image = None
    for p, panel in enumerate(panels):
        runs = [r for r in group if panel_key is None or r.config.get(panel_key) == panel]
        ticks = [_tick(col_key, c, col_tied, runs) for c in cols]
        title = describe(panel_key, panel, panel_tied, runs) if panel_key else ""
        matrix = worst_case_matrix(runs, rules, col_key, cols)
        image = _draw(axes[0][p], matrix, rules, ticks, label(col_key), title)
        if p:  # the same rules in every panel: name them once, on the left
            axes[0][p].tick_params(labelleft=False)
    fig.colorbar(image, ax=axes[0].tolist(), label="worst-case test accuracy (%)")
    return fig


def plot_heatmaps(runs: list[Run], out_dir: Path, title: str = "") -> list[Path]:
    """Write the worst-case heatmaps described in the module docstring; return their paths."""
    attacked = {r.config.get("aggregator") for r in runs if attack_of(r.config) != NO_ATTACK}
    runs = [r for r in runs if r.config.get("aggregator") in attacked]  # references have no row
    keys = row_keys(runs)
    free, _ = off_axes(runs, [k for k in keys if k not in ("aggregator", "momentum")])
    keys = [k for k in keys if k in free or k in ("aggregator", "momentum")]  # a rate tuned per rule and β
    kept, tied = reduce_keys(runs, [k for k in keys if k != "aggregator"])
    heat = [k for k in HEAT_KEYS if k in kept]  # f and α zipped together: only rule × f, α labels it
    paths = []
    for col_key in heat or ["momentum"]:
        col_tied = tied.get(col_key, [])
        others = [k for k in heat if k != col_key and k not in col_tied]
        panel_key = others[0] if others else None
        panel_tied = tied.get(panel_key, []) if panel_key else []
        on_axes = {"aggregator", col_key, *col_tied, *([panel_key, *panel_tied] if panel_key else [])}
        rest, rest_tied = reduce_keys(runs, [k for k in keys if k not in on_axes])
        for values, group in split_runs(runs, rest).items():
            if not any(attack_of(r.config) != NO_ATTACK for r in group):
                continue
            fig = _figure(group, col_key, col_tied, panel_key, panel_tied)
            where = ", ".join(describe(k, v, rest_tied[k], group) for k, v in zip(rest, values, strict=True))
            heading = " — ".join(t for t in (title, "worst case over attacks", where) if t)
            fig.suptitle(heading, fontsize=11)
            path = out_dir / f"heatmap_{label(col_key)}{file_suffix(rest, values)}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            paths.append(path)
    return paths
