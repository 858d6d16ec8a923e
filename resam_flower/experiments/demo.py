"""``resam demo`` (what ``make run`` runs): the short MNIST sweep of ``simulations/demo.toml``.

It runs the sweep (finished cells are reused: a second ``make run`` only reprints), then prints the
Markdown table, the accuracy with worker momentum vs without, and the paths of the plots.
"""

from __future__ import annotations

import time
from pathlib import Path

from .grid import load_sweep
from .plots import plot_sweep
from .report import write_report
from .results import NO_ATTACK, attack_of, load_runs, mean
from .runner import run_sweep

__all__ = ["run_demo", "demo_file", "momentum_lines"]


def demo_file() -> Path:
    """``simulations/demo.toml`` in the working directory, else next to the package (a source checkout)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        path = root / "simulations" / "demo.toml"
        if path.is_file():
            return path
    raise ValueError("simulations/demo.toml not found: run `resam demo` from the repository root")


def momentum_lines(directory: Path) -> list[str]:
    """One line per β: mean and worst-case accuracy under attack, and the no-attack reference."""
    runs = [r for r in load_runs(directory) if r.accuracy is not None]
    lines = []
    for beta in sorted({r.config.get("momentum") for r in runs}):
        at = [r for r in runs if r.config.get("momentum") == beta]
        attacked = [r.accuracy for r in at if attack_of(r.config) != NO_ATTACK]
        clean = [r.accuracy for r in at if attack_of(r.config) == NO_ATTACK]
        parts = [f"worker momentum β={beta:g}" + (" (none)" if beta == 0 else "") + ":"]
        if attacked:
            parts.append(f"under attack mean {100 * mean(attacked):.2f}%, worst {100 * min(attacked):.2f}%")
        if clean:
            parts.append(f"no attack {100 * mean(clean):.2f}%")
        lines.append(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))
    return lines


def run_demo(results: str | Path = "results", *, fresh: bool = False, progress: bool = True) -> int:
    """Run the demo sweep, print its table, the momentum comparison and the plot paths; 0 on success."""
    t0 = time.perf_counter()
    sweep = load_sweep(demo_file())
    print(f"[resam] demo: {sweep.description} -> {sweep.directory(results)}", flush=True)
    outcome = run_sweep(sweep, results, resume=not fresh, progress=progress)
    directory = sweep.directory(results)
    text, report_path = write_report(directory, "resam demo")
    figures = plot_sweep(directory, title="demo")
    print()
    print(text)
    for line in momentum_lines(directory):
        print(f"[resam] {line}")
    for path in figures:
        print(f"[resam] plot: {path}")
    failed = [r.cell.name for r in outcome if r.status == "failed"]
    print(
        f"[resam] report: {report_path}; demo wall time {time.perf_counter() - t0:.0f}s"
        + (f"; FAILED cells: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0
