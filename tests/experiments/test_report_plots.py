"""Reading results back, the Markdown report and the PNG figures, on fake sweep results (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from resam_flower.app.results import write_run
from resam_flower.experiments import Sweep, load_sweep, run_sweep
from resam_flower.experiments.heatmaps import worst_case_matrix
from resam_flower.experiments.layout import dependents, reduce_keys
from resam_flower.experiments.plots import curve_layout, mechanism_series, momentum_arms, plot_sweep
from resam_flower.experiments.report import markdown_table, write_report
from resam_flower.experiments.results import attack_of, load_runs, pivot, row_keys, worst_case
from tests.experiments.conftest import BASE

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[2]


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
    # (seed 0 only: the no-attack cells are an include without seeds, so the row has 1-2 seeds)
    row = next(line for line in lines if line.startswith("| krum | 0 |"))
    assert row == "| krum | 0 | 50.50 ± 0.71 | 60.50 ± 0.71 | **50.50** | 71.00 | 1–2 |"
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
    names = sorted(p.name for p in plot_sweep(tmp_path / "fa"))
    # curves: one file per (f, alpha); heatmaps: rule x f and rule x alpha, one file per beta
    assert names == [
        "curves__α0.5__f1.png", "curves__α0.5__f2.png", "curves__α5__f1.png", "curves__α5__f2.png",
        "heatmap_f__β0.9.png", "heatmap_f__β0.png", "heatmap_α__β0.9.png", "heatmap_α__β0.png",
    ]  # fmt: skip
    assert all((tmp_path / "fa" / "plots" / n).read_bytes().startswith(PNG) for n in names)


@pytest.fixture
def drawn(monkeypatch):
    """What each saved figure shows: file name -> (panel titles, column labels, heading)."""
    from matplotlib.figure import Figure

    seen: dict[str, tuple[list[str], list[list[str]], str]] = {}
    real = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        ticks = [[t.get_text() for t in ax.get_xticklabels()] for ax in axes]
        seen[Path(path).name] = ([ax.get_title() for ax in axes], ticks, fig.get_suptitle())
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_the_f_alpha_sweep_gives_rule_by_f_and_rule_by_alpha_per_beta(tmp_path, fake_simulate, drawn):
    sweep = load_sweep(ROOT / "simulations" / "paper_mnist_f_alpha.toml")
    assert sweep.grid["setting"][0] == {"num-clients": 11, "num-byzantine": 1}  # n is zipped with f
    sweep.base = {**sweep.base, "dataset": "digits", "model": "mlp", "num-server-rounds": 2}
    sweep.grid = {**sweep.grid, "aggregator": ["cwtm", "krum"], "attack": ["alie", "foe"]}
    run_sweep(sweep, tmp_path, progress=False, share_ray=False)
    runs = load_runs(tmp_path / sweep.name)
    assert dependents(runs, "num-byzantine") == ["num-clients"] and dependents(runs, "alpha") == []
    plot_sweep(tmp_path / sweep.name)
    heatmaps = sorted(n for n in drawn if n.startswith("heatmap"))
    assert heatmaps == [
        "heatmap_f__β0.99.png",
        "heatmap_f__β0.png",
        "heatmap_α__β0.99.png",
        "heatmap_α__β0.png",
    ]
    assert sorted(n for n in drawn if n.startswith("curves")) == [
        "curves__α1__f1.png",
        "curves__α1__f3.png",
        "curves__α5__f1.png",
        "curves__α5__f3.png",
    ]  # n does not split files: it comes with f
    titles, ticks, heading = drawn["heatmap_f__β0.png"]
    assert titles == ["α=1.0", "α=5.0"] and ticks == [["1\nn=11", "3\nn=13"]] * 2
    assert heading.endswith("worst case over attacks — β=0.0")
    titles, ticks, _ = drawn["heatmap_α__β0.99.png"]
    assert titles == ["f=1 (n=11)", "f=3 (n=13)"] and ticks == [["1.0", "5.0"]] * 2
    assert drawn["curves__α5__f3.png"][2] == "paper_mnist_f_alpha — α=5.0, f=3 (n=13)"

    # the numbers: worst case over {alie, foe} = alie; beta 0.99: 0.9 - 0.2 - 0.02 f - 0.03 [alpha < 2],
    # krum 0.05 lower
    at = [r for r in runs if r.config["momentum"] == 0.99]
    by_f = worst_case_matrix(
        [r for r in at if r.config["alpha"] == 1.0], ["cwtm", "krum"], "num-byzantine", [1, 3]
    )
    assert by_f == [[pytest.approx(65.0), pytest.approx(61.0)], [pytest.approx(60.0), pytest.approx(56.0)]]
    by_alpha = worst_case_matrix(
        [r for r in at if r.config["num-byzantine"] == 3], ["cwtm"], "alpha", [1.0, 5.0]
    )
    assert by_alpha == [[pytest.approx(61.0), pytest.approx(64.0)]]
    assert math.isnan(worst_case_matrix(at, ["mean"], "alpha", [1.0])[0][0])  # no such run: blank cell


def test_crossed_keys_split_files_and_zipped_keys_label_them(tmp_path, fake_simulate):
    grid = {"aggregator": "cwtm", "attack": "alie", "num-byzantine": [1, 2], "num-clients": [7, 9]}
    run_sweep(Sweep("x", BASE, grid), tmp_path, progress=False, share_ray=False)
    crossed = load_runs(tmp_path / "x")
    assert dependents(crossed, "num-byzantine") == [] and dependents(crossed, "num-clients") == []
    assert reduce_keys(crossed, ["num-clients", "num-byzantine"]) == (
        ["num-clients", "num-byzantine"],
        {"num-byzantine": [], "num-clients": []},
    )
    names = sorted(p.name for p in plot_sweep(tmp_path / "x"))
    assert [n for n in names if n.startswith("heatmap")] == [
        "heatmap_f__n7.png",
        "heatmap_f__n9.png",
    ]
    zipped = [r for r in crossed if (r.config["num-clients"], r.config["num-byzantine"]) in {(7, 1), (9, 2)}]
    assert dependents(zipped, "num-byzantine") == ["num-clients"]
    assert dependents(zipped, "num-clients") == ["num-byzantine"]
    # f and n determine each other: f is kept (it has priority), n labels it
    assert reduce_keys(zipped, ["num-clients", "num-byzantine"]) == (
        ["num-byzantine"],
        {"num-byzantine": ["num-clients"]},
    )


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


# -- the mechanism figure ------------------------------------------------------------------------------------
def mechanism_run(root: Path, rule: str, attack: str, beta: float, seed: int, rows: list[dict]) -> None:
    config = {**BASE, "aggregator": rule, "attack": attack, "momentum": beta, "seed": seed}
    summary = {"final_test_accuracy": 0.9, "initial_test_accuracy": 0.1, "config": config}
    write_run(root / f"{rule}-{attack}-{beta}-{seed}", config, rows, summary)


def spread_rows(spread: list, norm: list, err: list) -> list[dict]:
    return [
        {"round": r + 1, "valid": 7, "honest-spread-max": s, "honest-mean-norm": m, "aggregation-error": e,
         "kappa-empirical": "" if s in ("", 0) or e == "" else e / s}
        for r, (s, m, e) in enumerate(zip(spread, norm, err, strict=True))
    ]  # fmt: skip


@pytest.fixture
def mechanism(tmp_path) -> Path:
    root = tmp_path / "mech"
    # cwtm, alie, beta 0, two seeds; round 3 of seed 1 has a zero mean (no ratio) and seed 0 has no round 4
    seed0 = spread_rows([2.0, 4.0, 1.0], [1.0, 2.0, 1.0], [0.5, 1.0, 0.3])
    seed1 = spread_rows([4.0, 2.0, 1.0, 9.0], [1.0, 1.0, 0.0, 1.0], [1.5, 3.0, 0.1, 9.0])
    mechanism_run(root, "cwtm", "alie", 0.0, 0, seed0)
    mechanism_run(root, "cwtm", "alie", 0.0, 1, seed1)
    mechanism_run(root, "cwtm", "alie", 0.9, 0, spread_rows([1.0, 0.5], [2.0, 2.0], [0.2, 0.1]))
    # a run without an adversary writes no such columns, and a row may leave them empty
    mechanism_run(root, "cwtm", "none", 0.0, 0, [{"round": 1, "valid": 7}, {"round": 2, "valid": 7}])
    mechanism_run(root, "cwtm", "sf", 0.9, 0, spread_rows([3.0, ""], [1.5, ""], [0.3, ""]))
    return root


def test_mechanism_series_are_the_seed_means_of_spread_over_mean_norm_and_of_the_error(mechanism):
    series = mechanism_series(load_runs(mechanism))
    assert sorted(series, key=str) == [("cwtm", "alie", 0.0), ("cwtm", "alie", 0.9), ("cwtm", "sf", 0.9)]
    b0 = series[("cwtm", "alie", 0.0)]
    # ratios seed 0: 2/1, 4/2, 1/1; seed 1: 4/1, 2/1, (zero mean), 9/1 -> rounds both have: 1, 2
    assert b0["spread-ratio"] == ([1, 2], [pytest.approx(3.0), pytest.approx(2.0)])
    # errors seed 0: 0.5, 1.0, 0.3; seed 1: 1.5, 3.0, 0.1, 9.0 -> rounds 1..3
    assert b0["aggregation-error"] == ([1, 2, 3], [pytest.approx(v) for v in (1.0, 2.0, 0.2)])
    b9 = series[("cwtm", "alie", 0.9)]
    assert b9 == {"spread-ratio": ([1, 2], [0.5, 0.25]), "aggregation-error": ([1, 2], [0.2, 0.1])}
    assert series[("cwtm", "sf", 0.9)] == {"spread-ratio": ([1], [2.0]), "aggregation-error": ([1], [0.3])}


def test_plot_draws_the_mechanism_figure_when_the_columns_are_there(mechanism):
    paths = plot_sweep(mechanism)
    assert sorted(p.name for p in paths) == ["curves.png", "heatmap_β.png", "mechanism.png"]
    data = (mechanism / "plots" / "mechanism.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000


def test_a_rate_tuned_per_beta_labels_the_beta_columns_instead_of_splitting_files(tmp_path, fake_simulate):
    from resam_flower.experiments.layout import off_axes

    tuned = Sweep("tuned", BASE, {"aggregator": ["cwtm", "krum"], "attack": ["alie", "none"],
                                  "momentum": [{"momentum": 0.0, "lr": 0.5}, {"momentum": 0.9, "lr": 2.0}]})
    run_sweep(tuned, tmp_path, progress=False, share_ray=False)
    runs = load_runs(tmp_path / "tuned")
    assert off_axes(runs, ["lr"]) == ([], {"aggregator": [], "momentum": ["lr"]})
    assert sorted(p.name for p in plot_sweep(tmp_path / "tuned")) == ["curves.png", "heatmap_β.png"]
    crossed = Sweep("crossed", BASE, {"aggregator": ["cwtm"], "momentum": [0.0, 0.9], "lr": [0.5, 2.0]})
    run_sweep(crossed, tmp_path, progress=False, share_ray=False)
    runs = load_runs(tmp_path / "crossed")
    assert off_axes(runs, ["lr"]) == (["lr"], {"aggregator": [], "momentum": []})  # lr is not a function of β
    assert sorted(p.name for p in plot_sweep(tmp_path / "crossed")) == [
        "curves__lr0.5.png", "curves__lr2.png", "heatmap_β__lr0.5.png", "heatmap_β__lr2.png"]


def test_a_large_mechanism_figure_becomes_one_file_per_attack(tmp_path):
    from resam_flower.experiments import plots

    root = tmp_path / "big"
    rules, attacks = ["cwtm", "krum", "gm", "mda", "meamed"], ["alie", "foe", "sf"]
    for rule in rules:
        for attack in attacks:
            mechanism_run(root, rule, attack, 0.0, 0, spread_rows([2.0, 1.0], [1.0, 1.0], [0.5, 0.2]))
    assert len(rules) * len(attacks) > plots.MAX_MECHANISM_ROWS
    names = sorted(p.name for p in plots.plot_mechanism(load_runs(root), tmp_path))
    assert names == ["mechanism__alie.png", "mechanism__foe.png", "mechanism__sf.png"]
    few = [r for r in load_runs(root) if r.config["attack"] != "sf"][:12]
    assert [p.name for p in plots.plot_mechanism(few, tmp_path)] == ["mechanism.png"]


def test_a_rate_tuned_per_rule_and_beta_and_a_reference_rule_split_no_file(tmp_path, fake_simulate):
    from resam_flower.experiments.layout import off_axes

    s = Sweep("joint", BASE, {"aggregator": ["cwtm", "krum"], "attack": ["alie", "none"],
                              "momentum": [{"momentum": 0.0, "lr": 0.5}, {"momentum": 0.9, "lr": 2.0}]},
              exclude=[{"aggregator": "krum", "momentum": 0.9}],
              include=[{"aggregator": "krum", "attack": ["alie", "none"], "momentum": 0.9, "lr": 1.0},
                       {"aggregator": "mean", "attack": "none", "num-byzantine": 0, "momentum": 0.0}])
    run_sweep(s, tmp_path, progress=False, share_ray=False)
    runs = load_runs(tmp_path / "joint")
    free, tied = off_axes(runs, ["lr", "num-byzantine"])
    assert free == [] and tied == {"aggregator": ["num-byzantine"], "momentum": ["lr"]}
    assert sorted(p.name for p in plot_sweep(tmp_path / "joint")) == ["curves.png", "heatmap_β.png"]


def test_two_lr_schedules_of_one_beta_are_two_columns_of_one_heatmap(results, tmp_path):
    arm = Sweep("arm", {**BASE, "lr-schedule": "debiased", "momentum": 0.9},
                {"aggregator": ["cwtm", "krum"], "attack": ["alie", "foe"], "seed": [0, 1]})
    run_sweep(arm, tmp_path, progress=False, share_ray=False)
    runs = momentum_arms(load_runs(results) + load_runs(tmp_path / "arm"))
    assert sorted({str(r.config["momentum"]) for r in runs}) == ["0.0", "0.9", "0.9 debiased"]
    assert all("lr-schedule" not in r.config for r in runs)
    # fake accuracies: 0.9 with momentum, - 0.2 alie, - 0.05 krum, - 0.04 (f = 2), - 0.01 x seed; seed mean
    matrix = worst_case_matrix(runs, ["cwtm", "krum"], "momentum", [0.0, 0.9, "0.9 debiased"])
    assert matrix == [[pytest.approx(v) for v in row] for row in ([55.5, 65.5, 65.5], [50.5, 60.5, 60.5])]
    out = tmp_path / "figs"
    paths = plot_sweep([results, tmp_path / "arm"], out)
    assert sorted(p.name for p in paths if p.name.startswith("heatmap")) == ["heatmap_β.png"]
    # one schedule only: the runs are returned as they are
    alone = load_runs(results)
    assert momentum_arms(alone) is alone
