"""Continuing a committed sweep on a fresh clone: ``resam sweep --skip-exported`` counts the cells an export
holds as finished, and ``resam export --merge`` adds the new cells to that export (fake simulate, no Ray)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from resam_flower.cli import main
from resam_flower.experiments import Sweep, run_sweep
from resam_flower.experiments.compact import CELLS, CONFIG, ROUNDS, export_compact, load_compact
from resam_flower.experiments.results import load_cells
from tests.experiments.conftest import BASE, write_sweep_file

FILES = (CONFIG, CELLS, ROUNDS)
GRID = {"aggregator": ["cwtm", "krum"], "momentum": [0.0, 0.9], "seed": [0, 1]}


def _copy_cells(results, names, dest):
    """A results folder holding only the cells ``names`` of ``results`` (as on another machine), with the
    sweep's manifest (``sweep.json``)."""
    for name in names:
        shutil.copytree(results / name, dest / name)
    shutil.copy(results / "sweep.json", dest / "sweep.json")
    return dest


def _files(folder) -> dict[str, str]:
    return {name: (folder / name).read_text() for name in FILES}


@pytest.mark.parametrize("overlap", [0, 3])
def test_an_export_merged_in_parts_is_the_export_of_all_cells_at_once(results, tmp_path, overlap):
    names = sorted(p.name for p in results.iterdir() if (p / "summary.json").is_file())
    whole = tmp_path / "whole"
    export_compact(results, whole)
    first, second = names[: len(names) // 2], names[len(names) // 2 - overlap:]
    part = tmp_path / "part"
    export_compact(_copy_cells(results, first, tmp_path / "a"), part)
    assert len(load_compact(part)) == len(first)
    cells, _ = export_compact(_copy_cells(results, second, tmp_path / "b"), part, merge=True)
    assert cells == len(names)
    assert _files(part) == _files(whole)  # byte for byte: config.json, cells.csv, rounds.csv


def test_without_merge_a_part_does_not_replace_the_export_and_merge_refuses_another_config(results, tmp_path):
    names = sorted(p.name for p in results.iterdir() if (p / "summary.json").is_file())
    out = tmp_path / "out"
    export_compact(_copy_cells(results, names[:4], tmp_path / "a"), out)
    rest = _copy_cells(results, names[4:], tmp_path / "b")
    with pytest.raises(ValueError, match="4 of its 4 cells are not in this export"):
        export_compact(rest, out)
    changed = tmp_path / "c"
    _copy_cells(results, names[:1], changed)
    summary = json.loads((changed / names[0] / "summary.json").read_text())
    summary["config"]["lr"] = 0.123
    (changed / names[0] / "summary.json").write_text(json.dumps(summary))
    before = _files(out)
    with pytest.raises(ValueError, match=rf"1 cell\(s\) of .* another config .*{names[0]}: lr"):
        export_compact(changed, out, merge=True)
    assert _files(out) == before


def test_merge_refuses_another_sweeps_export_and_rows_its_every_would_drop(results, tmp_path, fake_simulate):
    names = sorted(p.name for p in results.iterdir() if (p / "summary.json").is_file())
    out = tmp_path / "out"
    export_compact(_copy_cells(results, names[:6], tmp_path / "a"), out)
    before = _files(out)
    # another sweep's results share no cell with the export: nothing in the cells tells them apart
    other = Sweep("other", {**BASE, "dataset": "synthetic"}, {"aggregator": ["mda"], "seed": [0, 1]})
    run_sweep(other, tmp_path, progress=False, share_ray=False)
    with pytest.raises(ValueError, match=r"6 of the 6 cells of .* not cells of this sweep .*another sweep"):
        export_compact(tmp_path / "other", out, merge=True)
    bare = tmp_path / "bare"  # no manifest: which sweep is it?
    shutil.copytree(results / names[7], bare / names[7])
    with pytest.raises(ValueError, match="no readable sweep.json .* give the sweep's TOML file as TARGET"):
        export_compact(bare, out, merge=True)
    assert _files(out) == before
    export_compact(bare, out, merge=True, planned=names)  # the names the sweep file plans (a TOML target)
    assert len(load_compact(out)) == 7
    # an export that keeps every fifth round of 30: a merge with --every 3 would thin its cells (round 25)
    long = Sweep("long", {**BASE, "num-server-rounds": 30}, {"aggregator": ["cwtm", "mda"]})
    run_sweep(long, tmp_path, progress=False, share_ray=False)
    part = tmp_path / "long-export"
    export_compact(_copy_cells(tmp_path / "long", ["cwtm"], tmp_path / "c"), part)
    rest = _copy_cells(tmp_path / "long", ["mda"], tmp_path / "d")
    dropped = r"--every 3 would drop 1 round row\(s\) .* \(e\.g\. round 25 of cwtm\)"
    with pytest.raises(ValueError, match=dropped):
        export_compact(rest, part, merge=True, every=3)
    export_compact(rest, part, merge=True, every=5)
    assert len(load_compact(part)) == 2


def test_export_merge_on_the_command_line(results, tmp_path, capsys):
    names = sorted(p.name for p in results.iterdir() if (p / "summary.json").is_file())
    out = str(tmp_path / "out")
    assert main(["export", str(_copy_cells(results, names[:5], tmp_path / "a")), "--out", out]) == 0
    b = str(_copy_cells(results, names[3:], tmp_path / "b"))
    assert main(["export", b, "--out", out, "--merge"]) == 0
    assert f"exported {len(names)} cells (5 were there, {len(names) - 5} added)" in capsys.readouterr().out
    assert [r.path.name for r in load_compact(out)] == names
    assert main(["export", b, "--out", out, "--merge", "--force"]) == 2
    assert "--merge keeps the export's cells, --force replaces them" in capsys.readouterr().err


def _sweep(**base) -> Sweep:
    return Sweep("cont", {**BASE, **base}, GRID)


def test_a_sweep_skips_the_cells_an_export_holds_and_the_merged_export_is_complete(tmp_path, fake_simulate):
    first = tmp_path / "first"
    run_sweep(_sweep(), first, progress=False, share_ray=False, where={"seed": "0"})
    export = tmp_path / "export"
    export_compact(first / "cont", export)
    exported = {r.path.name: r for r in load_compact(export)}
    assert len(exported) == 4 and len(fake_simulate) == 4
    # a fresh clone: the committed export, no results folder
    results = run_sweep(_sweep(), tmp_path / "fresh", progress=False, share_ray=False, exported=[export])
    ran = [c["run-name"] for c in fake_simulate[4:]]
    assert sorted(ran) == sorted(r.cell.name for r in results if r.status == "done")
    assert len(ran) == 4 and all(c["seed"] == 1 for c in fake_simulate[4:])
    cached = {r.cell.name: r for r in results if r.status == "cached"}
    assert set(cached) == set(exported)
    assert all(cached[n].summary["final_test_accuracy"] == exported[n].accuracy for n in cached)
    export_compact(tmp_path / "fresh" / "cont", export, merge=True)
    # the same as running the whole sweep in one folder, cell for cell
    run_sweep(_sweep(), first, progress=False, share_ray=False)
    whole = {r.path.name: (r.accuracy, r.curve) for r in load_cells(first / "cont")}
    assert {r.path.name: (r.accuracy, r.curve) for r in load_compact(export)} == whole
    # nothing left to run
    again = run_sweep(_sweep(), tmp_path / "third", progress=False, share_ray=False, exported=[export])
    assert {r.status for r in again} == {"cached"} and len(fake_simulate) == 12


def test_skip_exported_refuses_what_would_silently_rerun_or_skip_cells(tmp_path, fake_simulate):
    run_sweep(_sweep(), tmp_path / "r", progress=False, share_ray=False, only=["cwtm"])
    export_compact(tmp_path / "r" / "cont", tmp_path / "export")
    calls = len(fake_simulate)

    def refused(sweep, exports, message):
        with pytest.raises(ValueError, match=message):
            run_sweep(sweep, tmp_path / "new", progress=False, share_ray=False, exported=exports)
        assert len(fake_simulate) == calls

    # the file changed since the export: same cell names, another number of rounds
    refused(_sweep(**{"num-server-rounds": 5}), [tmp_path / "export"],
            r"4 of its cells have another config .* \(e\.g\. .*cwtm.*: num-server-rounds\)")
    refused(Sweep("other", BASE, {**GRID, "aggregator": ["mda"]}), [tmp_path / "export"],
            r"none of its 4 cells .* is a cell of this sweep: another sweep's export")
    refused(_sweep(), [tmp_path / "r" / "cont"], "not an export")


def test_skip_exported_on_the_command_line(tmp_path, fake_simulate, capsys):
    file = tmp_path / "cont.toml"
    write_sweep_file(file, "cont", BASE, 'aggregator = ["cwtm", "krum"]\nseed = [0, 1]\n', engine="ray")
    root = str(tmp_path / "results")
    assert main(["sweep", str(file), "--results", root, "--where", "seed=0", "--no-progress", "--fresh-ray",
                 "--no-report"]) == 0
    export = str(tmp_path / "export")
    assert main(["export", f"{root}/cont", "--out", export]) == 0
    fresh = str(tmp_path / "fresh")
    capsys.readouterr()
    assert main(["sweep", str(file), "--results", fresh, "--dry-run", "--skip-exported", export]) == 0
    states = [line.split("\t")[:2] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert sorted(state for _, state in states) == ["finished (exported)"] * 2 + ["to run"] * 2
    assert all(("__s1" in name) == (state == "to run") for name, state in states)
    assert main(["sweep", str(file), "--results", fresh, "--skip-exported", export, "--no-progress",
                 "--fresh-ray"]) == 0
    out = capsys.readouterr().out
    assert "2 cells run, 2 already finished" in out and len(fake_simulate) == 4
    # the report at the end covers the whole sweep, the exported cells too: the table of all four cells
    assert "4 finished cells" in out
    assert main(["sweep", str(file), "--results", root, "--no-progress", "--fresh-ray"]) == 0
    whole = capsys.readouterr().out

    def table(text: str) -> str:
        return text[text.index("| rule"):text.index("[resam] report:")]

    assert "4 finished cells" in whole and table(out) == table(whole)
    # the new cells join the export, read through the sweep file (the cells it plans)
    assert main(["export", str(file), "--results", fresh, "--out", export, "--merge"]) == 0
    assert "exported 4 cells (2 were there, 2 added)" in capsys.readouterr().out
    assert sorted(r.path.name for r in load_compact(export)) == sorted(name for name, _ in states)
    assert main(["sweep", str(file), "--results", fresh, "--skip-exported", export, "--no-resume"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_an_empty_attack_reads_back_as_no_attack_not_as_the_default(tmp_path):
    # attack = "" is a valid "no attack"; an empty CSV field reads back as "not set", i.e. the default alie
    from resam_flower.experiments.results import attack_of, config_differences

    raw = tmp_path / "s"
    configs = {"c0": {"attack": "", "attack-params": "", "seed": 0},
               "c1": {"attack": "alie", "attack-params": "", "seed": 1}}
    for name, config in configs.items():
        (raw / name).mkdir(parents=True)
        (raw / name / "summary.json").write_text(json.dumps({"final_test_accuracy": 0.5, "config": config}))
    export_compact(raw, tmp_path / "out")
    back = {r.path.name: r.config for r in load_compact(tmp_path / "out")}
    assert back["c0"]["attack"] == "" and back["c1"]["attack"] == "alie"
    assert config_differences(back["c0"], configs["c0"]) == []
    assert attack_of(back["c0"]) == attack_of(configs["c0"])
    assert "attack" in config_differences(back["c0"], back["c1"])
    with (tmp_path / "out" / CELLS).open(newline="") as fh:
        fields = {row["cell"]: row["attack"] for row in csv.DictReader(fh)}
    assert fields == {"c0": '""', "c1": "alie"}  # attack-params "" is shared: in config.json, as JSON
