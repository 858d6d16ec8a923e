"""User mistakes the ``resam`` commands must name (exit code 2 and a message, or a line on stderr) instead of
a traceback or a silently wrong table: failed runs, a cell given twice, a sweep file's stale cells, a wrong
``progress`` pairing, claims with nothing to compare, a document without blocks, an export over another, a
file where a folder belongs, corrupt cell files, a TOML syntax error, empty ``--rules`` and ``--only``."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from resam_flower.app.config import ExperimentConfig
from resam_flower.cli import main
from resam_flower.experiments import Sweep, run_sweep
from resam_flower.experiments.compact import export_compact, load_compact
from resam_flower.experiments.results import load_cells, load_runs
from resam_flower.experiments.runner import is_finished

from .conftest import BASE, fake_accuracy, write_sweep_file

ROOT = Path(__file__).resolve().parents[2]


def _row(table: str, first: str) -> list[str]:
    """The cells of the Markdown row of ``table`` whose first cell is ``first``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{table}")


def _acc(config: dict) -> float:
    return fake_accuracy(ExperimentConfig.from_run_config(config))


# -- A: a run that failed after writing summary.json ---------------------------------------------------------
def test_a_failed_run_is_rerun_and_left_out_of_every_table(tmp_path, fake_simulate, capsys):
    sweep = Sweep("a", BASE, {"aggregator": ["cwtm", "mda"], "seed": [0, 1]})
    run_sweep(sweep, tmp_path, progress=False, share_ray=False)
    cells = {c.name: c for c in sweep.cells(tmp_path)}
    failed = cells["cwtm__s1"]
    path = tmp_path / "a" / failed.name / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "status": "failed: no progress", "final_test_accuracy": 0.1}))

    assert is_finished(failed) is None and is_finished(cells["cwtm__s0"]) is not None
    runs = load_cells(tmp_path / "a")
    assert sorted(r.path.name for r in runs) == ["cwtm__s0", "mda__s0", "mda__s1"]
    err = capsys.readouterr().err
    assert "1 cell(s) left out: cwtm__s1 (status 'failed: no progress')" in err
    assert main(["report", str(tmp_path / "a"), "--where"]) == 0
    row = _row(capsys.readouterr().out, "cwtm")
    assert row[1] == f"{100 * _acc(cells['cwtm__s0'].config):.2f}" and row[-1] == "1"  # not 0.1, one seed

    export_compact(tmp_path / "a", tmp_path / "ex")
    assert sorted(r.path.name for r in load_compact(tmp_path / "ex")) == ["cwtm__s0", "mda__s0", "mda__s1"]
    # an export written before failed runs were left out: its failed rows are left out on reading
    with (tmp_path / "ex" / "cells.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["status"] = "failed: x"
    with (tmp_path / "ex" / "cells.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert [r.path.name for r in load_compact(tmp_path / "ex")] == ["mda__s0", "mda__s1"]
    assert "cwtm__s0 (status 'failed: x')" in capsys.readouterr().err

    fake_simulate.clear()
    run_sweep(sweep, tmp_path, progress=False, share_ray=False)  # the failed cell runs again, only it
    assert [c["run-name"] for c in fake_simulate] == ["cwtm__s1"]
    assert len(load_cells(tmp_path / "a")) == 4


# -- I: corrupt cell files -----------------------------------------------------------------------------------
def test_corrupt_cell_files_are_left_out_and_named(results, tmp_path, capsys):
    names = sorted(p.name for p in results.iterdir() if (p / "summary.json").exists())
    (results / names[0] / "timing.json").write_text("[]")
    (results / names[1] / "summary.json").write_text("[]")
    (results / names[2] / "timing.json").write_text("")
    (results / names[3] / "summary.json").write_text("{")
    runs = {r.path.name: r for r in load_cells(results)}
    assert sorted(runs) == [names[0], names[2], *names[4:]]  # an unreadable timing loses only the timing
    assert runs[names[0]].timing == {} == runs[names[2]].timing and runs[names[4]].timing
    err = capsys.readouterr().err
    summary = results / names[1] / "summary.json"
    assert f"2 cell(s) left out: {names[1]} (unreadable: {summary}: not a JSON object)" in err
    assert f"{names[3]} (unreadable: {results / names[3] / 'summary.json'}: Expecting" in err
    timing = results / names[0] / "timing.json"
    assert f"timing.json of 2 cell(s) unreadable, their time not counted: {names[0]} (unreadable: " \
           f"{timing}: not a JSON object)" in err
    assert f"{names[2]} (unreadable: {results / names[2] / 'timing.json'}: Expecting value" in err
    assert main(["report", str(results)]) == 0
    assert f"{len(names) - 2} finished cells" in capsys.readouterr().out

    export_compact(results, tmp_path / "ex")
    (tmp_path / "ex" / "config.json").write_text("")
    assert main(["report", str(tmp_path / "ex")]) == 2
    assert f"error: {tmp_path / 'ex' / 'config.json'}: Expecting value" in capsys.readouterr().err


# -- B: a cell in two sources --------------------------------------------------------------------------------
def test_a_cell_given_in_two_sources_is_an_error_naming_it_and_both(results, tmp_path, capsys):
    export_compact(results, tmp_path / "ex")
    ex = str(tmp_path / "ex")
    for argv in (["report", ex, str(results)], ["report", ex, ex], ["claims", str(results), ex],
                 ["plot", str(results), ex, "--out", str(tmp_path / "figs")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"error: cell cwtm__alie__b0.9__s0 of {argv[2]} is also in {argv[1]}" in err, err
    assert not (tmp_path / "figs").exists()
    # once: two seeds, and their sd
    assert main(["report", ex, "--where", "aggregator=cwtm", "attack=alie"]) == 0
    values = [_acc({**BASE, "aggregator": "cwtm", "attack": "alie", "momentum": 0.0, "seed": s})
              for s in (0, 1)]
    assert _row(capsys.readouterr().out, "0")[1] == (  # the row of β = 0
        f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}")


def test_claims_name_a_cell_copied_within_one_folder_as_the_same_cell_twice(results, capsys):
    shutil.copytree(results / "cwtm__alie__b0__s0", results / "copy")
    assert main(["claims", str(results)]) == 2
    err = capsys.readouterr().err
    assert "with the same config: the same cell twice" in err and "--where" not in err


# -- C: a sweep file reads only the cells it plans, with their config ---------------------------------------
def test_a_sweep_file_reads_only_its_planned_cells_with_their_config(tmp_path, fake_simulate, capsys):
    grid = 'aggregator = ["cwtm", "mda"]\nseed = [0, 1]\n'
    write_sweep_file(tmp_path / "t4.toml", "t", BASE, grid, engine="ray")  # num-server-rounds = 4
    write_sweep_file(tmp_path / "t6.toml", "t", {**BASE, "num-server-rounds": 6}, grid, engine="ray")
    common = ["--results", str(tmp_path), "--no-progress", "--jobs", "1"]
    assert main(["sweep", str(tmp_path / "t4.toml"), *common, "--no-report"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "t6.toml"), *common, "--where", "seed=0"]) == 0  # reruns seed 0
    out, err = capsys.readouterr()  # its report: the two cells of 6 rounds
    assert "2 finished cells" in out and "2 cell(s) in" in err and "(num-server-rounds): left out" in err
    rounds = {r.path.name: r.summary["rounds"] for r in load_cells(tmp_path / "t")}
    assert rounds == {"cwtm__s0": 6, "mda__s0": 6, "cwtm__s1": 4, "mda__s1": 4}

    for file, seed in (("t6.toml", 0), ("t4.toml", 1)):
        assert main(["report", str(tmp_path / file), "--results", str(tmp_path)]) == 0
        out, err = capsys.readouterr()
        assert "2 finished cells" in out, out
        expected = _acc({**BASE, "aggregator": "mda", "seed": seed})
        assert _row(out, "mda")[1:] == [f"{100 * expected:.2f}", f"**{100 * expected:.2f}**", "1"]
        assert f"2 cell(s) in {tmp_path / 't'} differ from what {tmp_path / file} plans (num-server-rounds)" \
               f": left out" in err
    assert main(["report", str(tmp_path / "t")]) == 0  # the folder: every cell
    assert "4 finished cells" in capsys.readouterr().out

    export_compact(tmp_path / "t", tmp_path / "ex")
    for source in (tmp_path / "t", tmp_path / "ex"):
        assert main(["progress", str(tmp_path / "t6.toml"), "--from", str(source)]) == 0
        out, err = capsys.readouterr()
        assert _row(out, "**all**")[1:4] == ["2 / 2", "0 / 2", "2 / 4"], out
        assert "differ from what" in err and "(num-server-rounds)" in err


def test_the_committed_exports_count_every_cell_of_their_sweep_files(capsys):
    for name in ("lab_mnist", "lab_mnist_debiased", "lab_fmnist", "lab_mnist_dirichlet", "lab_mnist_lr"):
        total = len(load_runs(ROOT / "reproduction" / name))
        assert main(["progress", str(ROOT / "simulations" / f"{name}.toml"), "--from",
                     str(ROOT / "reproduction" / name)]) == 0
        out, err = capsys.readouterr()
        assert _row(out, "**all**")[-2].split(" / ")[0] == str(total), (name, out)
        assert "left out" not in err, (name, err)


# -- D: progress from a wrong folder -------------------------------------------------------------------------
def test_progress_from_a_missing_folder_or_another_sweeps_results_is_an_error(tmp_path, capsys):
    fmnist = str(ROOT / "simulations" / "lab_fmnist.toml")
    assert main(["progress", fmnist, "--from", str(tmp_path / "missing")]) == 2
    assert f"error: no results folder {tmp_path / 'missing'}" in capsys.readouterr().err
    assert main(["progress", fmnist, "--from", str(ROOT / "reproduction" / "lab_mnist")]) == 2
    err = capsys.readouterr().err
    assert f"error: none of the 657 finished cells in {ROOT / 'reproduction' / 'lab_mnist'} is one that " \
           f"{fmnist} plans" in err
    (tmp_path / "empty").mkdir()  # a sweep not started: zeros
    assert main(["progress", fmnist, "--from", str(tmp_path / "empty")]) == 0
    assert _row(capsys.readouterr().out, "**all**")[-2:] == ["0 / 450", "0.0"]
    # without --from, the sweep's own folder before its first cell: zeros too
    assert main(["progress", fmnist, "--results", str(tmp_path / "not-yet")]) == 0
    assert _row(capsys.readouterr().out, "**all**")[-2:] == ["0 / 450", "0.0"]


def test_progress_of_an_edited_sweep_file_counts_none_of_the_cells_it_changed(tmp_path, fake_simulate,
                                                                               capsys):
    grid = 'aggregator = ["cwtm", "mda"]\n'
    write_sweep_file(tmp_path / "t.toml", "t", BASE, grid)
    common = ["--results", str(tmp_path), "--no-progress", "--no-report"]
    assert main(["sweep", str(tmp_path / "t.toml"), *common]) == 0
    write_sweep_file(tmp_path / "t.toml", "t", {**BASE, "num-server-rounds": 9}, grid)  # more rounds now
    capsys.readouterr()
    assert main(["progress", str(tmp_path / "t.toml"), "--results", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert _row(out, "**all**")[1:3] == ["0 / 2", "0 / 2"]
    assert "2 cell(s) in" in err and "differ from what" in err and "(num-server-rounds): left out" in err


# -- E: claims with nothing to compare -----------------------------------------------------------------------
@pytest.mark.parametrize("form", [[], ["--wide"], ["--summary"]])
def test_claims_without_an_attacked_cell_is_an_error(results, capsys, form):
    assert main(["claims", str(results), "--where", "attack=none", *form]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "error: no attacked cell among the 4 finished cells selected" in err


# -- F: a document whose markers are not read ---------------------------------------------------------------
def test_tables_names_markers_it_does_not_read(results, tmp_path, capsys):
    export_compact(results, tmp_path / "ex")
    doc = tmp_path / "d.md"
    doc.write_text("# x\n\n<!--resam report ex-->\n| old |\n<!-- /resam -->\n")
    assert main(["tables", str(doc), "--check"]) == 2
    err = capsys.readouterr().err
    assert "line 3: '<!--resam report ex-->' is not a block marker" in err
    assert "line 5: <!-- /resam --> closes no block" in err and "no generated table" in err
    assert main(["tables", str(doc)]) == 0  # a warning when rewriting
    assert "[resam] warning:" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "ex"), "--where"]) == 0
    table = capsys.readouterr().out.strip()
    doc.write_text(f"<!-- resam report ex -->\n{table}\n<!-- /resam -->\n<!-- /resam -->\n")
    assert main(["tables", str(doc), "--check"]) == 2  # the table matches, the extra close line does not
    extra = len(table.splitlines()) + 3
    assert capsys.readouterr().err.endswith(f"line {extra}: <!-- /resam --> closes no block\n")
    doc.write_text(f"<!-- resam report ex -->\n{table}\n<!-- /resam -->\n")
    assert main(["tables", str(doc), "--check"]) == 0


# -- G: an export over another ------------------------------------------------------------------------------
def test_export_refuses_to_replace_another_export_unless_forced(results, tmp_path, fake_simulate, capsys):
    out = tmp_path / "out"
    part = tmp_path / "part" / "fake"
    part.mkdir(parents=True)
    for name in ("cwtm__alie__b0__s0", "cwtm__alie__b0__s1"):
        shutil.copytree(results / name, part / name)
    assert main(["export", str(part), "--out", str(out)]) == 0
    assert main(["export", str(results), "--out", str(out)]) == 0  # the sweep grew: replaced
    committed = (out / "cells.csv").read_text()
    assert len(committed.splitlines()) == 1 + 20
    assert main(["export", str(part), "--out", str(out)]) == 2  # it would lose 18 cells
    err = capsys.readouterr().err
    assert f"{out} already holds an export: 18 of its 20 cells are not in this export (cwtm__alie__b0.9__s0" \
        in err
    assert (out / "cells.csv").read_text() == committed

    # another sweep of the same cell names (6 rounds, not 4), the no-attack cells not run
    grid = {"aggregator": ["cwtm", "krum"], "attack": ["alie", "foe"], "momentum": [0.0, 0.9], "seed": [0, 1]}
    run_sweep(Sweep("fake", {**BASE, "num-server-rounds": 6}, grid), tmp_path / "other", progress=False,
              share_ray=False)
    assert main(["export", str(tmp_path / "other" / "fake"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "16 of its cells have another config here (num-server-rounds; e.g. cwtm__alie__b0.9__s0)" in err
    assert "4 of its 20 cells are not in this export (cwtm__none__b0, cwtm__none__b0.9, krum__none__b0 " \
           "and 1 more)" in err
    assert main(["export", str(tmp_path / "other" / "fake"), "--out", str(out), "--force"]) == 0
    assert len((out / "cells.csv").read_text().splitlines()) == 1 + 16
    assert main(["export", str(out), "--out", str(tmp_path / "again")]) == 2
    assert f"error: {out} is already an export" in capsys.readouterr().err


# -- H: a file where a folder belongs ------------------------------------------------------------------------
def test_a_file_given_as_a_folder_is_an_error(results, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    write_sweep_file(tmp_path / "t.toml", "t", BASE, 'aggregator = ["cwtm"]\n')
    for argv in (["sweep", str(tmp_path / "t.toml"), "--results", str(afile), "--no-progress"],
                 ["sweep", str(tmp_path / "t.toml"), "--results", str(afile / "sub"), "--dry-run"],
                 ["export", str(results), "--out", str(afile)],
                 ["plot", str(results), "--out", str(afile)],
                 ["report", str(tmp_path / "t.toml"), "--results", str(afile)],
                 ["report", str(afile)],
                 ["progress", str(tmp_path / "t.toml"), "--from", str(afile)]):
        assert main(argv) == 2, argv
        assert f"error: {afile} is a file, not a folder" in capsys.readouterr().err, argv
    assert afile.read_text() == ""


# -- J: smaller mistakes -------------------------------------------------------------------------------------
def test_toml_syntax_errors_empty_rules_and_an_only_that_matches_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[base]\ndataset = mnist\n')
    for command in ("sweep", "report", "progress"):
        assert main([command, str(bad)]) == 2
        assert capsys.readouterr().err.startswith(f"resam {command}: error: {bad}: Invalid value")
    assert main(["kappa", "--rules", ""]) == 2
    assert "error: --rules '': no rule given" in capsys.readouterr().err
    write_sweep_file(tmp_path / "t.toml", "t", BASE, 'aggregator = ["cwtm", "mda"]\n')
    assert main(["sweep", str(tmp_path / "t.toml"), "--dry-run", "--only", "zzz", "cwtm"]) == 2
    err = capsys.readouterr().err
    assert "error: --only zzz: no cell of sweep 't' (2 cells) has 'zzz' in its name" in err
    assert main(["sweep", str(tmp_path / "t.toml"), "--dry-run", "--only", "md", "cwtm"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("2 cells")


# -- a --where that selects nothing says why -----------------------------------------------------------------
def test_a_where_that_selects_nothing_says_why(results, tmp_path, capsys):
    from resam_flower.experiments.results import select

    export_compact(results, tmp_path / "ex")
    for source in (str(results), str(tmp_path / "ex")):
        runs = load_runs(source)
        # an empty value reads the same in a results folder and in its export (an empty CSV field)
        assert len(select(runs, {"attack-params": ""})) == len(runs) == 20
        for argv, message in (
            (["report", source, "--where", "agregator=cwtm"],
             "no cell has a key 'agregator' (did you mean aggregator"),
            (["claims", source, "--where", "momentum=0.5"],
             "no cell has momentum=0.5 (values here: '0.0', '0.9')"),
            (["plot", source, "--out", str(tmp_path / "f"), "--where", "aggregator=Krum"],
             "no cell has aggregator=Krum (values here: 'cwtm', 'krum')"),
            (["report", source, "--where", "attack=none", "seed=1"],
             "each value is some cell's, but no cell has them all"),
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            selection = " ".join(argv[argv.index("--where") + 1:])
            assert f"error: --where {selection} selects none of the 20" in err
            assert message in err, err
    # where it varies, an export writes it per cell in cells.csv, the empty value as an empty field
    with (ROOT / "reproduction" / "lab_fmnist" / "cells.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    empty = sorted(row["cell"] for row in rows if row["attack-params"] == "")
    assert 0 < len(empty) < len(rows)
    runs = select(load_runs(ROOT / "reproduction" / "lab_fmnist"), {"attack-params": ""})
    assert sorted(r.path.name for r in runs) == empty


def test_dry_run_says_what_no_resume_reruns(tmp_path, fake_simulate, capsys):
    write_sweep_file(tmp_path / "t.toml", "t", BASE, 'aggregator = ["cwtm", "mda"]\n')
    common = ["sweep", str(tmp_path / "t.toml"), "--results", str(tmp_path), "--no-progress"]
    assert main([*common, "--no-report", "--only", "cwtm"]) == 0
    capsys.readouterr()
    for extra, cwtm in (([], "finished"), (["--no-resume"], "to rerun")):
        assert main([*common, "--dry-run", *extra]) == 0
        states = dict(line.split("\t")[:2] for line in capsys.readouterr().out.splitlines()[:-1])
        assert states == {"cwtm": cwtm, "mda": "to run"}



def test_a_key_set_in_some_cells_only_reexports_and_counts(tmp_path, fake_simulate, capsys):
    # `gamma` (a partitioner's parameter, not a field of the config) is in one cell only: the export writes
    # an empty field for the others, which must read as "not set", not as another config
    toml = tmp_path / "x.toml"
    write_sweep_file(toml, "x", BASE, 'aggregator = ["cwtm", "mda"]\n')
    toml.write_text(toml.read_text() + '[[include]]\naggregator = "mda"\ngamma = 0.3\n')
    common = ["--results", str(tmp_path), "--no-progress", "--no-report"]
    assert main(["sweep", str(toml), *common]) == 0
    names = sorted(p.name for p in (tmp_path / "x").iterdir() if (p / "summary.json").exists())
    assert len(names) == 3
    for _ in range(2):  # the export, then again as a sweep grows: no refusal
        assert main(["export", str(tmp_path / "x"), "--out", str(tmp_path / "ex")]) == 0
    capsys.readouterr()
    for source in (tmp_path / "x", tmp_path / "ex"):
        assert main(["progress", str(toml), "--from", str(source)]) == 0
        out, err = capsys.readouterr()
        assert _row(out, "**all**")[1] == "3 / 3" and "left out" not in err
    # two sweeps of one name (a copied file) with other configs are two experiments, not one cell twice
    other = tmp_path / "other"
    write_sweep_file(tmp_path / "y.toml", "x", {**BASE, "num-server-rounds": 9}, 'aggregator = ["cwtm"]\n')
    assert main(["sweep", str(tmp_path / "y.toml"), "--results", str(other), *common[2:]]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "ex"), str(other / "x"), "--where"]) == 0
    assert sorted(line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()[2:]
                  if line.startswith("|")) == ["cwtm", "cwtm", "mda", "mda"]  # 4 and 9 rounds; γ or not
