"""Reading results back, the Markdown report and the PNG figures, on fake sweep results (no Ray)."""

from __future__ import annotations

import math

import pytest

from resam_flower.experiments import Sweep, run_sweep
from resam_flower.experiments.plots import curve_layout, plot_sweep
from resam_flower.experiments.report import markdown_table, write_report
from resam_flower.experiments.results import attack_of, load_runs, pivot, row_keys, worst_case
from tests.experiments.conftest import BASE

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results(tmp_path, fake_simulate):
    sweep = Sweep(
        "fake",
        BASE,
        {"aggregator": ["cwtm", "krum"], "attack": ["alie", "foe"], "momentum": [0.0, 0.9], "seed": [0, 1]},
        include=[{"attack": "none", "aggregator": ["cwtm", "krum"], "momentum": [0.0, 0.9]}],
    )
    run_sweep(sweep, tmp_path, progress=False, share_ray=False)
    return tmp_path / "fake"


def test_load_runs_and_pivot(results):
    runs = load_runs(results)
    assert len(runs) == 16 + 4
    assert row_keys(runs) == ["aggregator", "momentum"]
    curve = runs[0].curve
    assert curve[0] == (0, 0.1) and [r for r, _ in curve] == [0, 2, 4]
    attacks, table = pivot(runs, ["aggregator", "momentum"])
    assert attacks == ["alie", "foe", "none"]
    cells = table[("cwtm", 0.9)]
    assert cells["alie"] == [pytest.approx(0.66), pytest.approx(0.65)]  # seeds 0 and 1
    # worst case: min over attacks of the seed mean, no-attack excluded
    assert worst_case(cells) == pytest.approx(0.655)
    assert math.isnan(worst_case({"none": [0.9]}))


def test_attack_label():
    assert attack_of({"attack": "alie", "num-byzantine": 2}) == "alie"
    assert attack_of({"attack": "alie", "attack-params": "z=1.5", "num-byzantine": 2}) == "alie(z=1.5)"
    assert attack_of({"attack": "alie", "num-byzantine": 0}) == "none"
    assert attack_of({"attack": "none", "num-byzantine": 2}) == "none"


def test_markdown_table_values(results):
    text = markdown_table(load_runs(results))
    lines = text.splitlines()
    assert lines[0] == "| rule | β | alie (%) | foe (%) | worst case (%) | no attack (%) | seeds |"
    # krum, beta=0: alie 0.8-0.2-0.05-0.04-{0, 0.01} -> 51.00, 50.00 -> 50.50 ± 0.71; foe 60.50; none 71.00
    row = next(line for line in lines if line.startswith("| krum | 0 |"))
    assert row == "| krum | 0 | 50.50 ± 0.71 | 60.50 ± 0.71 | **50.50** | 71.00 | 2 |"
    assert len(lines) == 2 + 4


def test_write_report_includes_timings(results):
    text, path = write_report(results, "Fake")
    assert path.read_text() == text and text.startswith("# Fake")
    assert "start-up per cell" in text and "per round" in text


def test_plots_are_png_files(results, tmp_path):
    paths = plot_sweep(results, tmp_path / "figs")
    names = sorted(p.name for p in paths)
    assert names == ["curves.png", "heatmap_β.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000


def test_heatmaps_per_f_and_alpha(tmp_path, fake_simulate):
    sweep = Sweep(
        "fa",
        {**BASE, "partitioner": "dirichlet"},
        {
            "aggregator": ["cwtm", "mda"],
            "num-byzantine": [1, 2],
            "alpha": [0.5, 5.0],
            "momentum": [0.0, 0.9],
            "attack": "alie",
        },
    )
    run_sweep(sweep, tmp_path, progress=False, share_ray=False)
    paths = plot_sweep(tmp_path / "fa")
    names = sorted(p.name for p in paths)
    # curves: one file per (f, alpha); heatmaps: rule x f per alpha, rule x alpha per f
    assert names.count("heatmap_f__α0.5.png") == 1 and "heatmap_α__f2.png" in names
    assert sum(n.startswith("curves__") for n in names) == 4
    assert all(p.parent == tmp_path / "fa" / "plots" for p in paths)


def test_empty_results_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="resam sweep"):
        write_report(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished cell"):
        plot_sweep(tmp_path / "empty")


def test_reference_rules_are_overlaid_not_given_a_row(tmp_path, fake_simulate):
    sweep = Sweep(
        "ref",
        BASE,
        {"aggregator": ["cwtm", "krum"], "attack": "alie", "momentum": [0.0, 0.9]},
        include=[{"aggregator": "mean", "attack": "none", "momentum": [0.0, 0.9]}],
    )
    run_sweep(sweep, tmp_path, progress=False, share_ray=False)
    runs = load_runs(tmp_path / "ref")
    assert curve_layout(runs) == (["cwtm", "krum"], ["mean"], [0.0, 0.9])
    assert curve_layout([r for r in runs if r.config["aggregator"] == "mean"]) == (["mean"], [], [0.0, 0.9])
    text = markdown_table(runs)
    assert "| mean | 0.9 | — | — | 86.00 | 1 |" in text  # the reference keeps its own row in the table
    assert sorted(p.name for p in plot_sweep(tmp_path / "ref")) == ["curves.png", "heatmap_β.png"]
