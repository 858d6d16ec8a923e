"""``resam plot``: accuracy-vs-round curves (β = 0 next to β > 0) and worst-case heatmaps, as PNG files.

* ``curves*.png``: one column per β, one row per rule; in each panel one line per attack (mean over
  seeds), the rule's no-attack run dashed, and rules run only without attack (a reference such as the
  plain mean) dotted. Reading across a row shows what worker momentum changes for that rule.
* ``heatmap_<key>*.png``: worst-case final accuracy over attacks (seed-averaged) for rule × ``key`` with
  ``key`` = ``num-byzantine`` (f) and/or ``alpha`` when the sweep varies them, one panel per β; with
  neither, one rule × β panel.

Keys that vary besides those (dataset, lr...) give one file per combination (suffix in the file name).
Rendering uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .grid import _slug  # noqa: E402
from .results import NO_ATTACK, Run, attack_of, load_runs, mean, row_keys, worst_case  # noqa: E402

__all__ = ["plot_curves", "plot_heatmaps", "plot_sweep", "curve_layout"]

HEAT_KEYS = ("num-byzantine", "alpha")
LABELS = {"num-byzantine": "f", "alpha": "α", "momentum": "β", "aggregator": "rule"}


def _split(runs: list[Run], keys: list[str]) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(run.config.get(k) for k in keys)].append(run)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def _suffix(keys: list[str], values: tuple) -> str:
    return "".join(f"__{LABELS.get(k, k)}{_slug(v)}" for k, v in zip(keys, values, strict=True))


def _title(keys: list[str], values: tuple) -> str:
    return ", ".join(f"{LABELS.get(k, k)}={v}" for k, v in zip(keys, values, strict=True))


def _mean_curve(runs: list[Run]) -> tuple[list[int], list[float]]:
    by_round: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for rnd, acc in run.curve:
            by_round[rnd].append(acc)
    rounds = sorted(r for r, v in by_round.items() if len(v) == len(runs))
    return rounds, [100 * mean(by_round[r]) for r in rounds]


def _sorted_values(values: set[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (v is None, str(type(v)), v if v is not None else 0))


def curve_layout(runs: list[Run]) -> tuple[list[Any], list[Any], list[Any]]:
    """Rows (rules run under attack), reference rules (run only without attack: drawn dotted in every
    panel, e.g. the plain mean), and columns (β values) of a curve figure."""
    attacked = {r.config.get("aggregator") for r in runs if attack_of(r.config) != NO_ATTACK}
    every = {r.config.get("aggregator") for r in runs}
    rules = _sorted_values(attacked or every)
    return rules, _sorted_values(every - set(rules)), _sorted_values({r.config.get("momentum") for r in runs})


def plot_curves(runs: list[Run], out_dir: Path, title: str = "") -> list[Path]:
    """Write the curve figures; return their paths."""
    keys = row_keys(runs)
    rest = [k for k in keys if k not in ("aggregator", "momentum")]
    paths = []
    for values, group in _split(runs, rest).items():
        rules, reference_rules, betas = curve_layout(group)
        attacks = sorted({attack_of(r.config) for r in group})
        fig, axes = plt.subplots(
            len(rules),
            len(betas),
            figsize=(4.2 * len(betas), 3.0 * len(rules) + 0.6),
            squeeze=False,
            sharex=True,
            sharey=True,
        )
        colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(a for a in attacks if a != NO_ATTACK)}
        for i, rule in enumerate(rules):
            for j, beta in enumerate(betas):
                ax = axes[i][j]
                at_beta = [r for r in group if r.config.get("momentum") == beta]
                cell = [r for r in at_beta if r.config.get("aggregator") == rule]
                for attack in attacks:
                    xs, ys = _mean_curve([r for r in cell if attack_of(r.config) == attack])
                    if not xs:
                        continue
                    if attack == NO_ATTACK:
                        ax.plot(xs, ys, label="no attack", color="black", linestyle="--", linewidth=1.5)
                    else:
                        ax.plot(xs, ys, label=attack, color=colors[attack], linewidth=1.5)
                for k, ref in enumerate(reference_rules):
                    xs, ys = _mean_curve([r for r in at_beta if r.config.get("aggregator") == ref])
                    if xs:
                        ax.plot(
                            xs,
                            ys,
                            label=f"{ref}, no attack",
                            color="grey",
                            linewidth=1.2,
                            linestyle=(0, (1 + k, 1.5)),
                        )
                ax.set_title(f"{rule}, β={beta}", fontsize=10)
                ax.grid(alpha=0.3)
                if j == 0:
                    ax.set_ylabel("test accuracy (%)")
                if i == len(rules) - 1:
                    ax.set_xlabel("round")
        handles, labels = axes[0][0].get_legend_handles_labels()
        for row in axes:
            for ax in row:
                for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                    if lab not in labels:
                        handles.append(h)
                        labels.append(lab)
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
        heading = " — ".join(t for t in (title, _title(rest, values)) if t)
        fig.suptitle(heading or "test accuracy per round", fontsize=11)
        fig.tight_layout(rect=(0, 0.06, 1, 0.96))
        path = out_dir / f"curves{_suffix(rest, values)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _heatmap(ax, matrix: list[list[float]], rows: list[Any], cols: list[Any], xlabel: str, title: str):
    image = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(
                    j,
                    i,
                    f"{value:.1f}",
                    ha="center",
                    va="center",
                    color="white" if value < 60 else "black",
                    fontsize=8,
                )
    return image


def plot_heatmaps(runs: list[Run], out_dir: Path, title: str = "") -> list[Path]:
    """Write the worst-case heatmaps; return their paths."""
    keys = row_keys(runs)
    col_keys = [k for k in HEAT_KEYS if k in keys] or ["momentum"]
    paths = []
    for col_key in col_keys:
        panel_key = "momentum" if col_key != "momentum" and "momentum" in keys else None
        rest = [k for k in keys if k not in ("aggregator", col_key, panel_key)]
        for values, group in _split(runs, rest).items():
            rules = _sorted_values(
                {r.config.get("aggregator") for r in group if attack_of(r.config) != NO_ATTACK}
            )
            if not rules:
                continue
            cols = _sorted_values({r.config.get(col_key) for r in group})
            panels = _sorted_values({r.config.get(panel_key) for r in group}) if panel_key else [None]
            fig, axes = plt.subplots(
                1,
                len(panels),
                figsize=(1.1 * len(cols) * len(panels) + 3, 0.5 * len(rules) + 2),
                squeeze=False,
            )
            image = None
            for p, panel in enumerate(panels):
                matrix = []
                for rule in rules:
                    line = []
                    for col in cols:
                        cell: dict[str, list[float]] = defaultdict(list)
                        for r in group:
                            if (
                                (r.config.get("aggregator"), r.config.get(col_key)) == (rule, col)
                                and (panel_key is None or r.config.get(panel_key) == panel)
                                and r.accuracy is not None
                            ):
                                cell[attack_of(r.config)].append(r.accuracy)
                        line.append(100 * worst_case(cell))
                    matrix.append(line)
                name = f"β={panel}" if panel_key else ""
                image = _heatmap(axes[0][p], matrix, rules, cols, LABELS.get(col_key, col_key), name)
            fig.colorbar(image, ax=axes[0].tolist(), label="worst-case test accuracy (%)")
            heading = " — ".join(t for t in (title, "worst case over attacks", _title(rest, values)) if t)
            fig.suptitle(heading, fontsize=11)
            path = out_dir / f"heatmap_{LABELS.get(col_key, col_key)}{_suffix(rest, values)}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            paths.append(path)
    return paths


def plot_sweep(
    directory: str | Path, out_dir: str | Path | None = None, title: str | None = None
) -> list[Path]:
    """All figures of the sweep whose results are in ``directory`` (default output: ``<directory>/plots``)."""
    directory = Path(directory)
    runs = load_runs(directory)
    if not runs:
        raise ValueError(f"no finished cell under {directory}: run `resam sweep` first")
    out = Path(out_dir) if out_dir is not None else directory / "plots"
    out.mkdir(parents=True, exist_ok=True)
    name = title if title is not None else directory.name
    return plot_curves(runs, out, name) + plot_heatmaps(runs, out, name)
