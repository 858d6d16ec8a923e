"""REPRODUCTION.md's command block, as a reader runs it: every ``resam`` line parses, names files that are
committed, and each ``resam plot`` line writes every figure the page embeds from its folder (and no committed
figure of that folder is one it no longer writes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import matplotlib.image
import pytest

from resam_flower.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "REPRODUCTION.md").read_text()


def command_block(doc: str) -> str:
    """The code block under the page's ``## Commands`` heading."""
    section = doc.split("\n## Commands", 1)[1]
    return section.split("```\n", 2)[1]


def resam_commands(block: str) -> list[list[str]]:
    """Each ``resam`` line of ``block`` as its argument list, shell variables (``R="..."``) expanded and
    trailing ``# comments`` dropped."""
    variables: dict[str, str] = {}
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", words[0])
        if assignment and len(words) == 1:
            variables[assignment[1]] = assignment[2]
            continue
        assert words[0] == "resam", f"not a resam command: {line!r}"
        expanded = []
        for word in words[1:]:
            if word.startswith("$"):
                assert word[1:] in variables, f"{word} is not set before {line!r}"
                expanded += variables[word[1:]].split()
            else:
                expanded.append(word)
        commands.append(expanded)
    return commands


COMMANDS = resam_commands(command_block(DOC))
PLOTS = [c for c in COMMANDS if c[0] == "plot"]


def test_the_block_is_read_as_a_reader_would():
    block = 'R="a b"   # two folders\nresam report $R   # the table\n\nresam plot $R --out x\n'
    assert resam_commands(block) == [["report", "a", "b"], ["plot", "a", "b", "--out", "x"]]
    with pytest.raises(AssertionError, match=r"\$S is not set"):
        resam_commands("resam report $S\n")
    with pytest.raises(AssertionError, match="not a resam command"):
        resam_commands("make test\n")


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_parses_and_reads_committed_files(argv):
    args = build_parser().parse_args(argv)  # a renamed flag or subcommand exits here
    assert args.command == argv[0]
    inputs = [w for w in argv[1:] if w.startswith(("reproduction/", "simulations/")) or w.endswith(".md")]
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    for path in inputs:
        if path != out:
            assert (ROOT / path).exists(), f"`resam {' '.join(argv)}` reads {path}, which is not committed"


def test_the_block_plots_every_reproduction_folder_the_page_embeds_figures_of():
    embedded = {Path(p).parent.as_posix() for p in re.findall(r"\]\((docs/figures/lab_[^)]+\.png)\)", DOC)}
    assert embedded, "the page embeds no figure of the reproduction"
    assert embedded <= {c[c.index("--out") + 1] for c in PLOTS}


@pytest.mark.parametrize("argv", PLOTS, ids=[" ".join(c) for c in PLOTS])
def test_each_plot_command_writes_the_figures_the_page_embeds(argv, tmp_path, capsys):
    out = argv[argv.index("--out") + 1]
    assert main([*argv[: argv.index("--out")], "--out", str(tmp_path)]) == 0
    written = {Path(p).name for p in capsys.readouterr().out.split()}
    embedded = {Path(p).name for p in re.findall(rf"\]\(({re.escape(out)}/[^)]+\.png)\)", DOC)}
    committed = {p.name for p in (ROOT / out).glob("*.png")}
    assert embedded <= written, f"{sorted(embedded - written)} embedded: the command no longer writes it"
    assert embedded <= committed, f"{sorted(embedded - committed)} embedded but not committed under {out}"
    assert committed <= written, f"{sorted(committed - written)} under {out}: the command no longer writes it"
    for name in sorted(committed):
        # the layout (panels per rule, attack and beta) follows the data: the same size or a stale figure
        regenerated = matplotlib.image.imread(tmp_path / name).shape
        assert matplotlib.image.imread(ROOT / out / name).shape == regenerated, name


EXPORTS = sorted(p.parent for p in (ROOT / "reproduction").glob("*/cells.csv"))


@pytest.mark.parametrize("export", EXPORTS, ids=[p.name for p in EXPORTS])
def test_every_committed_cell_ran_all_its_rounds(export):
    # a skipped round means the cell is not the experiment it names: e.g. a sweep paused (to run CI) for
    # longer than the round deadline drops that round's replies. Such cells are rerun, not committed.
    import csv

    with (export / "cells.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    bad = [(r["cell"], r["status"], r["skipped_rounds"]) for r in rows
           if r["status"] != "ok" or r["skipped_rounds"] not in ("0", "")]
    assert not bad, f"{len(bad)} cells of {export.name} did not run every round: {bad[:5]}"
