"""Generated tables of a document (`resam tables`), the sweep progress table (`resam progress`), and the check
that every generated table of REPRODUCTION.md matches the committed results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from resam_flower.cli import main, render_table
from resam_flower.experiments import load_sweep
from resam_flower.experiments.doctables import blocks, progress_markdown, refresh

from .conftest import BASE, write_fake_run, write_sweep_file

ROOT = Path(__file__).resolve().parents[2]

DOC = """# Title

Prose with | a pipe that is not a table.

<!-- resam claims one -->
| old | table |
<!-- /resam -->

More prose.

<!-- resam report two -->
| same |
<!-- /resam -->
tail
"""


def test_refresh_rewrites_each_blocks_table_and_nothing_else():
    outputs = {"claims one": "# heading\n\n| new | table |\n|---|---|\n| 1 | 2 |\nfooter\n",
               "report two": "| same |\n"}
    new, stale = refresh(DOC, outputs.__getitem__)
    assert new == DOC.replace("| old | table |\n", "| new | table |\n|---|---|\n| 1 | 2 |\n")
    assert [(b.command, b.line) for b in stale] == [("claims one", 5)]
    assert refresh(new, outputs.__getitem__) == (new, [])  # idempotent: nothing stale once rewritten


def test_a_block_of_list_items_is_refreshed_like_a_table():
    # `resam claims --summary` prints bullets: their lines are the block's body, prose around them is not
    doc = "<!-- resam claims x --summary -->\n- old\n<!-- /resam -->\n- prose after\n"
    new, stale = refresh(doc, lambda command: "- **1.** one\n  not an item\n- **2.** two\n")
    assert new == ("<!-- resam claims x --summary -->\n- **1.** one\n- **2.** two\n<!-- /resam -->\n"
                   "- prose after\n")
    assert [b.line for b in stale] == [1]


def test_a_block_without_its_closing_line_or_a_table_is_an_error():
    with pytest.raises(ValueError, match="line 5: block `resam claims one` has no <!-- /resam -->"):
        blocks(DOC.replace("<!-- /resam -->\n\nMore", "\nMore"))
    with pytest.raises(ValueError, match="line 1: block `resam report x`"):
        blocks("<!-- resam report x -->\n| a |\n")
    with pytest.raises(ValueError, match=r"line 11: `resam report two`: the command printed no table"):
        refresh(DOC, lambda command: "| x |\n" if command == "claims one" else "no table here\n")


def test_only_table_commands_render_and_report_writes_no_file(results):
    with pytest.raises(ValueError, match="not one of report, claims, progress"):
        render_table(f"sweep {results}")
    with pytest.raises(ValueError, match="--bogus`: resam: error: unrecognized arguments: --bogus"):
        render_table(f"claims {results} --bogus")
    (results / "report.md").unlink(missing_ok=True)
    text = render_table(f"report {results}")
    assert not (results / "report.md").exists()
    table = [line for line in text.splitlines() if line.startswith("| cwtm | 0 ")][0]
    # cwtm, β = 0, seeds 0 and 1: fake accuracy 0.8 - 0.2 (alie) - 0.04 (f = 2) - 0.01 × seed
    assert "| 55.50 ± 0.71 |" in table and "| 75.50 ± 0.71 |" not in table


def test_progress_counts_finished_cells_per_rule_and_seed(tmp_path):
    base = {k: v for k, v in BASE.items() if k != "num-byzantine"} | {"num-byzantine": 2}
    grid = 'aggregator = ["cwtm", "krum"]\nattack = ["alie", "foe"]\nseed = [0, 1]\n'
    write_sweep_file(tmp_path / "s.toml", "s", base, grid)
    cells = load_sweep(tmp_path / "s.toml").cells(tmp_path)
    chosen = [c for c in cells if c.config["aggregator"] == "cwtm" and c.config["seed"] == 0]
    chosen += [c for c in cells if c.config["aggregator"] == "krum" and c.config["seed"] == 1][:1]
    stray = {**chosen[0].config, "aggregator": "gm", "run-name": "gm_not_planned"}
    for config in [c.config for c in chosen] + [stray]:
        write_fake_run(config)
    for summary_path in (tmp_path / "s").glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        summary["wall_time_s"] = 3600.0 if summary["config"]["aggregator"] == "gm" else 1800.0
        summary_path.write_text(json.dumps(summary))
    assert len(list((tmp_path / "s").glob("*/summary.json"))) == 4
    assert progress_markdown(tmp_path / "s.toml", tmp_path / "s") == (
        "| rule | seed 0 | seed 1 | all | cell time (h) |\n"
        "|---|---|---|---|---|\n"
        "| cwtm | 2 / 2 | 0 / 2 | 2 / 4 | 1.0 |\n"
        "| krum | 0 / 2 | 1 / 2 | 1 / 4 | 0.5 |\n"
        "| **all** | 2 / 4 | 1 / 4 | 3 / 8 | 1.5 |\n"
    )
    (tmp_path / "empty").mkdir()  # a sweep not started yet: none finished
    assert progress_markdown(tmp_path / "s.toml", tmp_path / "empty").splitlines()[-1] == (
        "| **all** | 0 / 4 | 0 / 4 | 0 / 8 | 0.0 |")
    with pytest.raises(ValueError, match=r"no results folder .*none"):  # a typo: not zeros
        progress_markdown(tmp_path / "s.toml", tmp_path / "none")


def _copy_reproduction(tmp_path: Path) -> Path:
    """REPRODUCTION.md in ``tmp_path`` beside links to the committed results and experiment files."""
    for name in ("reproduction", "simulations"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / "REPRODUCTION.md", tmp_path / "REPRODUCTION.md")
    return tmp_path / "REPRODUCTION.md"


def test_every_generated_table_of_reproduction_md_matches_the_committed_results(capsys):
    doc = (ROOT / "REPRODUCTION.md").read_text()
    commands = [b.command.split()[0] for b in blocks(doc)]
    assert {"report", "claims", "progress"} <= set(commands), commands
    assert main(["tables", str(ROOT / "REPRODUCTION.md"), "--check"]) == 0, capsys.readouterr().out


def test_tables_check_fails_on_an_edited_number_and_rewriting_restores_it(tmp_path, capsys):
    path = _copy_reproduction(tmp_path)
    committed = path.read_text()
    block = next(b for b in blocks(committed) if b.command.startswith("claims"))
    row = next(line for line in block.body.splitlines() if line.startswith("| cwmed |"))
    cells = row.split(" | ")
    edited = " | ".join([cells[0], "+99.9 ± 0.1 ✓", *cells[2:]])
    assert edited != row and cells[1] != "+99.9 ± 0.1 ✓"
    path.write_text(committed.replace(row, edited))
    assert main(["tables", str(path), "--check"]) == 1
    out, err = capsys.readouterr()
    assert f"REPRODUCTION.md:{block.line}: stale: resam {block.command}" in err
    assert f"-{edited}" in out and f"+{row}" in out
    assert main(["tables", str(path)]) == 0
    assert path.read_text() == committed
