"""``resam plot``: accuracy-vs-round curves (β = 0 next to β > 0) and worst-case heatmaps, as PNG files.

* ``curves*.png``: one column per β, one row per rule; in each panel one line per attack (mean over
  seeds), the rule's no-attack run dashed, and rules run only without attack (a reference such as the
  plain mean) dotted. Reading across a row shows what worker momentum changes for that rule.
* ``heatmap_*.png``: worst-case final accuracy over attacks, rule × f and rule × α per β when the sweep
  varies ``num-byzantine`` and/or ``alpha``, else rule × β (see :mod:`.heatmaps`).
* ``mechanism*.png`` (runs whose ``metrics.csv`` has the simulated adversary's per-round columns): RESAM's
  mechanism, one row per (rule, attack) and one line per β (mean over seeds): the honest spread relative to
  the signal, ``honest-spread-max / honest-mean-norm`` = max_{i,j∈H} ‖m_i − m_j‖ / ‖m̄_H‖, and the
  aggregation error ``aggregation-error`` = ‖R_t − m̄_H‖, against the round (log scale). Worker momentum
  should shrink the first, and with it the second (κ · spread bounds it for an (f, κ)-resilient rule).
  A sweep with more than :data:`MAX_MECHANISM_ROWS` (rule, attack) pairs gets one file per attack.

Keys that vary besides those (dataset, lr...) give one file per combination (suffix in the file name);
keys zipped with another one (``num-clients`` with ``num-byzantine``) label it instead (see :mod:`.layout`).
Rendering uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .claims import arm_of  # noqa: E402
from .grid import _slug  # noqa: E402
from .heatmaps import plot_heatmaps  # noqa: E402
from .layout import describe, figure_keys, file_suffix, sorted_values, split_runs  # noqa: E402
from .results import NO_ATTACK, Run, attack_of, combine, load_runs, mean, select  # noqa: E402

__all__ = ["plot_curves", "plot_heatmaps", "plot_mechanism", "plot_sweep", "curve_layout", "mechanism_series",
           "MECHANISM_COLUMNS"]

#: ``metrics.csv`` columns the simulated adversary writes each round (it knows the honest set H).
MECHANISM_COLUMNS = ("honest-spread-max", "honest-spread-mean", "honest-mean-norm", "aggregation-error",
                     "kappa-empirical")
#: The two quantities drawn: name -> axis label.
MECHANISM_PANELS = {
    "spread-ratio": "honest spread / ‖mean_H‖",
    "aggregation-error": "aggregation error ‖R − mean_H‖",
}


def _mean_curve(runs: list[Run]) -> tuple[list[int], list[float]]:
    by_round: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for rnd, acc in run.curve:
            by_round[rnd].append(acc)
    rounds = sorted(r for r, v in by_round.items() if len(v) == len(runs))
    return rounds, [100 * mean(by_round[r]) for r in rounds]


def curve_layout(runs: list[Run]) -> tuple[list[Any], list[Any], list[Any]]:
    """Rows (rules run under attack), reference rules (run only without attack: drawn dotted in every
    panel, e.g. the plain mean), and columns (β values) of a curve figure."""
    attacked = {r.config.get("aggregator") for r in runs if attack_of(r.config) != NO_ATTACK}
    every = {r.config.get("aggregator") for r in runs}
    rules = sorted_values(attacked or every)
    return rules, sorted_values(every - set(rules)), sorted_values({r.config.get("momentum") for r in runs})


def plot_curves(runs: list[Run], out_dir: Path, title: str = "") -> list[Path]:
    """Write the curve figures; return their paths."""
    rest, tied, on_axes = figure_keys(runs)
    paths = []
    for values, group in split_runs(runs, rest).items():
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
                beta_text = describe("momentum", beta, on_axes["momentum"], cell or at_beta)
                ax.set_title(f"{rule}, {beta_text}", fontsize=10)
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
        where = ", ".join(describe(k, v, tied[k], group) for k, v in zip(rest, values, strict=True))
        heading = " — ".join(t for t in (title, where) if t)
        fig.suptitle(heading or "test accuracy per round", fontsize=11)
        fig.tight_layout(rect=(0, 0.06, 1, 0.96))
        path = out_dir / f"curves{file_suffix(rest, values)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _round_values(rows: list[dict[str, str]]) -> dict[str, dict[int, float]]:
    """``{panel: {round: value}}`` of one run's per-round metric rows (finite values only; ``{}`` without the
    columns). ``spread-ratio`` = ``honest-spread-max / honest-mean-norm`` (rounds of zero mean skipped)."""
    out: dict[str, dict[int, float]] = {name: {} for name in MECHANISM_PANELS}
    try:
        for row in rows:
            rnd = int(float(row["round"]))
            spread, norm, err = (_number(row.get(k)) for k in
                                 ("honest-spread-max", "honest-mean-norm", "aggregation-error"))
            if spread is not None and norm:
                out["spread-ratio"][rnd] = spread / norm
            if err is not None:
                out["aggregation-error"][rnd] = err
    except (KeyError, ValueError):
        return {}
    return out if any(out.values()) else {}


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def mechanism_series(runs: list[Run]) -> dict[tuple[Any, str, Any], dict[str, tuple[list[int], list[float]]]]:
    """``{(rule, attack, β): {panel: (rounds, mean over the runs)}}`` for the runs that recorded the columns.

    Per run and round, ``spread-ratio`` = ``honest-spread-max / honest-mean-norm`` and ``aggregation-error``
    as written; the runs of a cell (seeds) are averaged round by round, over the rounds every one of them has.
    """
    cells: dict[tuple[Any, str, Any], list[dict[str, dict[int, float]]]] = defaultdict(list)
    for run in runs:
        values = _round_values(run.metrics())
        if values:
            key = (run.config.get("aggregator"), attack_of(run.config), run.config.get("momentum"))
            cells[key].append(values)
    out = {}
    for key, per_run in cells.items():
        out[key] = {}
        for panel in MECHANISM_PANELS:
            rounds = sorted(set.intersection(*(set(v[panel]) for v in per_run)))
            out[key][panel] = (rounds, [mean([v[panel][r] for v in per_run]) for r in rounds])
    return out


#: A mechanism figure with more (rule, attack) rows than this is drawn as one file per attack instead.
MAX_MECHANISM_ROWS = 12


def _mechanism_figure(rows, series, group: list[Run], beta_ties: list[str], heading: str, path: Path) -> Path:
    betas = sorted_values({beta for _, _, beta in series})
    colors = {b: plt.cm.viridis(i / max(len(betas) - 1, 1)) for i, b in enumerate(betas)}
    size = (9.0, 2.8 * len(rows) + 0.6)
    fig, axes = plt.subplots(len(rows), 2, figsize=size, squeeze=False, sharex=True)
    for i, (rule, attack) in enumerate(rows):
        for j, (panel, ylabel) in enumerate(MECHANISM_PANELS.items()):
            ax = axes[i][j]
            for beta in betas:
                xs, ys = series.get((rule, attack, beta), {}).get(panel, ([], []))
                if xs:
                    marker = "o" if len(xs) < 30 else None  # a short series stays visible
                    at_beta = [r for r in group if r.config.get("momentum") == beta
                               and r.config.get("aggregator") == rule] or group
                    ax.plot(xs, ys, label=describe("momentum", beta, beta_ties, at_beta),
                            color=colors[beta], linewidth=1.4, marker=marker, markersize=3)
            if all(y > 0 for line in ax.get_lines() for y in line.get_ydata()) and ax.get_lines():
                ax.set_yscale("log")
            ax.set_title(f"{rule}, {attack}", fontsize=10)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(rows) - 1:
                ax.set_xlabel("round")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(len(labels), 1), frameon=False)
    fig.suptitle(f"{heading + ': ' if heading else ''}honest spread and aggregation error", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_mechanism(runs: list[Run], out_dir: Path, title: str = "") -> list[Path]:
    """Write the mechanism figures (see the module docstring); none when no run recorded the columns.
    Above :data:`MAX_MECHANISM_ROWS` (rule, attack) rows: one file per attack (``mechanism__alie.png``)."""
    rest, tied, on_axes = figure_keys(runs)
    paths = []
    for values, group in split_runs(runs, rest).items():
        series = mechanism_series(group)
        if not series:
            continue
        rows = sorted({(rule, attack) for rule, attack, _ in series}, key=str)
        where = ", ".join(describe(k, v, tied[k], group) for k, v in zip(rest, values, strict=True))
        heading = " — ".join(t for t in (title, where) if t)
        stem = f"mechanism{file_suffix(rest, values)}"
        if len(rows) <= MAX_MECHANISM_ROWS:
            paths.append(_mechanism_figure(rows, series, group, on_axes["momentum"], heading,
                                           out_dir / f"{stem}.png"))
            continue
        for attack in sorted({a for _, a in rows}):
            mine = [(rule, a) for rule, a in rows if a == attack]
            path = out_dir / f"{stem}__{_slug(attack)}.png"
            paths.append(_mechanism_figure(mine, {k: v for k, v in series.items() if k[1] == attack}, group,
                                           on_axes["momentum"], " — ".join(t for t in (heading, attack) if t),
                                           path))
    return paths


def momentum_arms(runs: list[Run]) -> list[Run]:
    """``runs`` with ``momentum`` read as the momentum arm when the lr schedule varies: β and a schedule
    other than ``constant`` become one value (``"0.99 debiased"``) and ``lr-schedule`` is dropped, so that
    two arms of one β are two columns of a heatmap and two lines of a figure, as in the claims table;
    unchanged otherwise."""
    arms = [arm_of(run.config) for run in runs]
    if len({arm.schedule for arm in arms}) < 2:
        return runs
    out = []
    for run, arm in zip(runs, arms, strict=True):
        config = {k: v for k, v in run.config.items() if k != "lr-schedule"}
        if arm.schedule:
            config["momentum"] = f"{arm:g}"
        out.append(dataclasses.replace(run, config=config))
    return out


def plot_sweep(
    directory: str | Path | list[str | Path],
    out_dir: str | Path | None = None,
    title: str | None = None,
    where: dict[str, str] | None = None,
    runs: list[Run] | None = None,
) -> list[Path]:
    """All figures of the sweep whose results are in ``directory`` (default output: ``<directory>/plots``),
    or of several result folders together (a list: one sweep's grid and another arm of it; ``out_dir``
    then required); ``where``: only the runs whose config values read as these texts
    (``{"attack": "alie"}``); ``runs``: the runs to draw (default: those of the folders, a cell in two of
    them an error: :func:`~.results.combine`)."""
    folders = [Path(d) for d in (directory if isinstance(directory, list) else [directory])]
    if runs is None:
        runs = combine([(folder, load_runs(folder)) for folder in folders])
    runs = momentum_arms(select(runs, where))
    if not runs:
        selection = f" with {where}" if where else ""
        where_from = ", ".join(map(str, folders))
        raise ValueError(f"no finished cell{selection} under {where_from}: run `resam sweep` first")
    if out_dir is None and len(folders) > 1:
        raise ValueError("several result folders: give the output folder (--out)")
    out = Path(out_dir) if out_dir is not None else folders[0] / "plots"
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    name = title if title is not None else " + ".join(folder.name for folder in folders)
    return plot_curves(runs, out, name) + plot_heatmaps(runs, out, name) + plot_mechanism(runs, out, name)
