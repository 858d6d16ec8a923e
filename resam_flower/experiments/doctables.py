"""Tables of a Markdown document that ``resam`` regenerates from results, and a sweep's progress table.

A document (REPRODUCTION.md) marks each generated table with the ``resam`` command that makes it::

    <!-- resam claims reproduction/lab_mnist --wide -->
    | rule | ... |
    |---|...|
    <!-- /resam -->

:func:`refresh` replaces each block's body with the table lines (lines that start with ``|``; list items,
``- ``, for ``resam claims --summary``) of its command's output, given a ``render`` function (the CLI's:
``resam tables FILE``); ``resam tables FILE
--check`` fails, naming the stale blocks, when a committed table no longer matches the committed results.
Text outside the blocks is never touched.

:func:`progress_markdown` is ``resam progress``: the cells of a sweep finished so far, per rule and seed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .grid import Sweep, load_sweep
from .results import load_runs, planned_runs

__all__ = ["Block", "blocks", "progress_markdown", "refresh", "stray_markers"]

_OPEN = re.compile(r"^<!-- resam (?P<command>.+?) -->[ \t]*$", re.M)
_CLOSE = "<!-- /resam -->"


@dataclass(frozen=True)
class Block:
    """One generated block: its command (after ``resam``), its body's span in the text and the body."""

    command: str
    start: int
    end: int
    body: str
    line: int


def blocks(text: str) -> list[Block]:
    """The generated blocks of ``text`` in order; :class:`ValueError` names the line of a block that is not
    closed (by ``<!-- /resam -->`` on its own line) before the next one opens or the text ends."""
    out = []
    for match in _OPEN.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        start = match.end() + 1 if text[match.end():match.end() + 1] == "\n" else match.end()
        close = re.compile(rf"^{re.escape(_CLOSE)}[ \t]*$", re.M).search(text, start)
        following = _OPEN.search(text, start)
        if close is None or (following is not None and following.start() < close.start()):
            raise ValueError(f"line {line}: block `resam {match['command']}` has no {_CLOSE} line")
        out.append(Block(match["command"].strip(), start, close.start(), text[start:close.start()], line))
    return out


_MARKER = re.compile(r"^[ \t]*<!--[ \t]*/?[ \t]*resam")


def stray_markers(text: str) -> list[str]:
    """Lines that look like a block's marker but that :func:`blocks` does not read as one: an opening line
    it does not accept (``<!--resam report x-->``: no spaces) or a ``<!-- /resam -->`` that closes no
    block; ``"line N: ..."`` each, in order. Such a table would silently go unchecked."""
    found = blocks(text)
    used = {text.count("\n", 0, b.start) for b in found} | {text.count("\n", 0, b.end) + 1 for b in found}
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not _MARKER.match(line) or number in used:
            continue
        if re.fullmatch(rf"{re.escape(_CLOSE)}[ \t]*", line):
            out.append(f"line {number}: {_CLOSE} closes no block")
        else:
            out.append(f"line {number}: {line.strip()!r} is not a block marker (expected "
                       "`<!-- resam COMMAND -->` on its own line)")
    return out


def table_lines(output: str) -> str:
    """The Markdown a command printed: its table rows (lines that start with ``|``) and list items (lines
    that start with ``- ``, e.g. ``resam claims --summary``), newline-terminated."""
    lines = [line for line in output.splitlines() if line.startswith(("|", "- "))]
    if not lines:
        raise ValueError("the command printed no table")
    return "\n".join(lines) + "\n"


def refresh(text: str, render: Callable[[str], str]) -> tuple[str, list[Block]]:
    """``text`` with every block's body replaced by ``table_lines(render(command))``, and the blocks whose
    body changed. A failing command raises :class:`ValueError` naming the block's line and command."""
    parts, stale, last = [], [], 0
    for block in blocks(text):
        try:
            body = table_lines(render(block.command))
        except (ValueError, SystemExit) as exc:
            raise ValueError(f"line {block.line}: `resam {block.command}`: {exc}") from exc
        if body != block.body:
            stale.append(block)
        parts += [text[last:block.start], body]
        last = block.end
    parts.append(text[last:])
    return "".join(parts), stale


def _seed(config: dict) -> str:
    return str(config.get("seed", 0))


def progress_markdown(sweep_file: str | Path | Sweep, folder: str | Path, *, missing_ok: bool = False) -> str:
    """Per rule (``aggregator``, in the file's order) and seed: ``finished / planned`` cells of the sweep
    ``sweep_file`` (or its parsed :class:`~.grid.Sweep`) whose results are in ``folder`` (a sweep folder or
    an export), with a total row and the finished cells' time.

    A finished cell counts when the file plans a cell of its name with its config
    (:func:`~.results.planned_runs`); the others are left out with a line on stderr. :class:`ValueError`
    when ``folder`` does not exist (unless ``missing_ok``: the sweep's own folder before its first cell), or
    when it holds finished cells and the file plans none of their names (the results of another sweep); an
    empty folder counts none, and so do cells of planned names run with another config (named on stderr).
    """
    sweep = sweep_file if isinstance(sweep_file, Sweep) else load_sweep(sweep_file)
    plan = sweep.source or sweep.name
    cells = sweep.cells()
    planned = {c.name: c.config for c in cells}
    folder = Path(folder)
    missing = missing_ok and not folder.exists()
    runs = [] if missing else [r for r in load_runs(folder) if r.accuracy is not None]
    done = {r.path.name: r for r in planned_runs(runs, cells, folder, plan)}
    if runs and not any(r.path.name in planned for r in runs):
        raise ValueError(f"none of the {len(runs)} finished cells in {folder} is one that {plan} plans: "
                         "the results of another sweep?")
    rules = list(dict.fromkeys(str(c.config.get("aggregator")) for c in cells))
    seeds = sorted({_seed(c.config) for c in cells}, key=lambda s: (len(s), s))

    def count(rule: str | None, seed: str | None) -> str:
        names = [n for n, c in planned.items() if (rule is None or str(c.get("aggregator")) == rule)
                 and (seed is None or _seed(c) == seed)]
        return f"{sum(n in done for n in names)} / {len(names)}"

    def hours(rule: str | None) -> str:
        total = sum(r.timing.get("total_s") or r.summary.get("wall_time_s") or 0.0 for n, r in done.items()
                    if rule is None or str(planned[n].get("aggregator")) == rule)
        return f"{total / 3600:.1f}"

    header = ["rule", *(f"seed {s}" for s in seeds), "all", "cell time (h)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rule in [*rules, None]:
        row = [rule or "**all**", *(count(rule, s) for s in seeds), count(rule, None), hours(rule)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
