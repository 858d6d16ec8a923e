"""``resam plot``: accuracy-vs-round curves (β = 0 next to β > 0) and worst-case heatmaps, as PNG files.

* ``curves*.png``: one column per β, one row per rule; in each panel one line per attack (mean over
  seeds), the rule's no-attack run dashed, and rules run only without attack (a reference such as the
  plain mean) dotted. Reading across a row shows what worker momentum changes for that rule.
* ``heatmap_*.png``: worst-case final accuracy over attacks, rule × f and rule × α per β when the sweep
  varies ``num-byzantine`` and/or ``alpha``, else rule × β (see :mod:`.heatmaps`).

Keys that vary besides those (dataset, lr...) give one file per combination (suffix in the file name);
keys zipped with another one (``num-clients`` with ``num-byzantine``) label it instead (see :mod:`.layout`).
Rendering uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .heatmaps import plot_heatmaps  # noqa: E402
from .layout import describe, file_suffix, reduce_keys, sorted_values, split_runs  # noqa: E402
from .results import NO_ATTACK, Run, attack_of, load_runs, mean, row_keys  # noqa: E402

__all__ = ["plot_curves", "plot_heatmaps", "plot_sweep", "curve_layout"]


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
    keys = row_keys(runs)
    rest, tied = reduce_keys(runs, [k for k in keys if k not in ("aggregator", "momentum")])
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
        where = ", ".join(describe(k, v, tied[k], group) for k, v in zip(rest, values, strict=True))
        heading = " — ".join(t for t in (title, where) if t)
        fig.suptitle(heading or "test accuracy per round", fontsize=11)
        fig.tight_layout(rect=(0, 0.06, 1, 0.96))
        path = out_dir / f"curves{file_suffix(rest, values)}.png"
        fig.savefig(path, dpi=110)
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
