"""``resam report``: the Markdown table of a sweep (accuracy per attack, worst case, no attack), and timings.

One row per configuration (the sweep's varying keys except attack and seed), one column per attack with
the final test accuracy in % (mean ± standard deviation over seeds when there are several), then the
worst case over attacks and the no-attack accuracy when the sweep has ``attack = "none"`` cells, and the
number of seeds (``1–2`` when the row's columns have different numbers of seeds: a partial sweep, whose worst
case then compares means over different seeds).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..app.results import atomic_write_text
from .results import NO_ATTACK, Run, load_runs, mean, pivot, row_keys, worst_case

__all__ = ["markdown_table", "timing_lines", "write_report"]

LABELS = {"aggregator": "rule", "momentum": "β", "num-byzantine": "f", "num-clients": "n", "alpha": "α"}


def _pct(values: list[float]) -> str:
    if not values:
        return "—"
    text = f"{100 * mean(values):.2f}"
    if len(values) > 1:
        text += f" ± {100 * statistics.stdev(values):.2f}"
    return text


def markdown_table(runs: list[Run]) -> str:
    """The table described in the module docstring (empty string when there is no run)."""
    if not runs:
        return ""
    keys = row_keys(runs) or ["aggregator"]
    attacks, table = pivot(runs, keys)
    attacked = [a for a in attacks if a != NO_ATTACK]
    header = [LABELS.get(k, k) for k in keys] + [f"{a} (%)" for a in attacked]
    if attacked:
        header.append("worst case (%)")
    if NO_ATTACK in attacks:
        header.append("no attack (%)")
    header.append("seeds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def sort_key(row: tuple) -> tuple:
        return tuple((v is None, str(type(v)), v if v is not None else 0) for v in row)

    for row in sorted(table, key=sort_key):
        cells = table[row]
        out = [f"{v:g}" if isinstance(v, float) else str(v) for v in row]
        out += [_pct(cells.get(a, [])) for a in attacked]
        if attacked:
            wc = worst_case(cells)
            out.append("—" if math.isnan(wc) else f"**{100 * wc:.2f}**")
        if NO_ATTACK in attacks:
            out.append(_pct(cells.get(NO_ATTACK, [])))
        counts = sorted({len(v) for v in cells.values()}) or [0]
        out.append(str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def timing_lines(runs: list[Run]) -> list[str]:
    """Median start-up and per-round times over the cells that recorded them."""
    timed = [r.timing for r in runs if r.timing.get("round_s") is not None]
    if not timed:
        return []
    first = [t for t in timed if t.get("startup_s", 0) > 0]
    med = statistics.median
    return [
        f"- cells timed: {len(timed)}; total simulate() time {sum(t['total_s'] for t in timed):.0f} s",
        f"- start-up per cell (call to end of round 1, minus one round): median "
        f"{med(t['startup_s'] for t in timed):.2f} s, "
        f"max {max(t['startup_s'] for t in first or timed):.2f} s",
        f"- per round: median {med(t['round_s'] for t in timed):.3f} s",
    ]


def write_report(directory: str | Path, title: str | None = None, runs: list[Run] | None = None
                 ) -> tuple[str, Path]:
    """Write ``<directory>/report.md`` of ``runs`` (default: the folder's, :func:`~.results.load_runs`);
    return its text and path."""
    directory = Path(directory)
    runs = load_runs(directory) if runs is None else runs
    if not runs:
        raise ValueError(f"no finished cell under {directory}: run `resam sweep` first")
    text = [
        f"# {title or directory.name}",
        "",
        f"{len(runs)} finished cells in `{directory}`. Final test "
        "accuracy (%), mean ± std over seeds; worst case = minimum over attacks.",
        "",
        markdown_table(runs),
        "",
    ]
    timing = timing_lines(runs)
    if timing:
        text += ["Timings:", "", *timing, ""]
    body = "\n".join(text)
    path = directory / "report.md"
    atomic_write_text(path, body)
    return body, path
