"""The compact export of a sweep (``resam export``) and the claims table with confidence intervals."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from resam_flower.cli import main
from resam_flower.experiments.claims import claims_markdown, claims_rows, interval, t_quantile
from resam_flower.experiments.compact import SUMMARY_FIELDS, export_compact, is_compact, load_compact
from resam_flower.experiments.plots import mechanism_series, plot_sweep
from resam_flower.experiments.report import markdown_table
from resam_flower.experiments.results import Run, load_cells, load_runs, select
from tests.experiments.test_report_plots import mechanism_run, spread_rows


def _without(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("results-dir", "run-name")}


def test_export_then_load_gives_the_same_runs_report_and_curves(results, tmp_path):
    out = tmp_path / "compact"
    cells, _ = export_compact(results, out)
    assert cells == 20 and is_compact(out) and not is_compact(results)
    full, compact = load_cells(results), load_runs(out)  # load_runs reads the exported files
    assert [r.path.name for r in compact] == [r.path.name for r in full]
    for a, b in zip(full, compact, strict=True):
        assert _without(b.config) == _without(a.config), a.path.name
        assert b.accuracy == a.accuracy and b.curve == a.curve
        assert all(b.summary[k] == a.summary.get(k) for k in SUMMARY_FIELDS)
        assert b.timing == {k: a.timing[k] for k in ("total_s", "startup_s", "round_s")}
    assert markdown_table(compact) == markdown_table(full)


def test_export_keeps_string_values_that_look_like_numbers_as_strings(tmp_path):
    # e.g. attack-params "1e-3" or a label "true": the export must not turn them into 0.001 or True
    strings = ["1e-3", "true", "5", "[1, 2]", "null", "z='lab'", "plain"]
    for i, text in enumerate(strings):
        config = {"aggregator": "cwtm", "attack": "alie", "attack-params": text, "seed": i, "lr": 0.5}
        (tmp_path / "s" / f"c{i}").mkdir(parents=True)
        (tmp_path / "s" / f"c{i}" / "summary.json").write_text(
            json.dumps({"final_test_accuracy": 0.5, "config": config}))
    export_compact(tmp_path / "s", tmp_path / "out")
    back = {r.path.name: r.config for r in load_compact(tmp_path / "out")}
    assert [back[f"c{i}"]["attack-params"] for i in range(len(strings))] == strings
    assert [back[f"c{i}"]["seed"] for i in range(len(strings))] == list(range(len(strings)))
    assert all(back[f"c{i}"]["lr"] == 0.5 for i in range(len(strings)))


def test_export_keeps_the_mechanism_series_and_thins_the_rounds(tmp_path):
    root = tmp_path / "mech"
    rows = spread_rows([float(r) for r in range(1, 31)], [2.0] * 30, [0.1 * r for r in range(1, 31)])
    rows[12]["test-accuracy"] = 0.5  # an evaluated round is always kept
    mechanism_run(root, "cwtm", "alie", 0.0, 0, rows)
    mechanism_run(root, "cwtm", "alie", 0.9, 0, spread_rows([1.0, 0.5], [2.0, 2.0], [0.2, 0.1]))
    out = tmp_path / "compact"
    export_compact(root, out, every=7)
    with (out / "rounds.csv").open() as fh:
        kept = [int(r["round"]) for r in csv.DictReader(fh) if r["cell"] == "cwtm-alie-0.0-0"]
    assert kept == [*range(1, 11), 13, 14, 21, 28]
    full, compact = mechanism_series(load_cells(root)), mechanism_series(load_compact(out))
    assert compact[("cwtm", "alie", 0.9)] == full[("cwtm", "alie", 0.9)]
    rounds, ratio = compact[("cwtm", "alie", 0.0)]["spread-ratio"]
    assert rounds == kept and ratio == [pytest.approx(r / 2.0) for r in kept]
    assert sorted(p.name for p in plot_sweep(out)) == ["curves.png", "heatmap_β.png", "mechanism.png"]


def _t_cdf(x: float, df: int) -> float:
    """Student-t CDF by Simpson integration of the density (independent of the quantile table)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    steps = 20_000
    h = x / steps
    total = sum((1 if i in (0, steps) else 4 if i % 2 else 2) * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2)
                for i in range(steps + 1))
    return 0.5 + c * total * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 30, 31, 45, 120, 1000])
def test_t_quantiles_are_the_975_points(df):
    assert _t_cdf(t_quantile(df), df) == pytest.approx(0.975, abs=2e-4)


def test_interval_is_mean_plus_minus_t_sd_over_root_k():
    ci = interval([90.0, 92.0, 97.0])
    sd = statistics.stdev([90.0, 92.0, 97.0])
    assert ci.mean == pytest.approx(93.0) and ci.half == pytest.approx(4.303 * sd / math.sqrt(3))
    assert ci.verdict(105.0, above=False) == "agrees"  # the whole interval (84.0, 102.0) is below 105
    assert ci.verdict(80.0, above=False) == "disagrees"
    assert ci.verdict(93.0, above=True) == "inconclusive"
    assert interval([3.0]).verdict(5.0, above=False) == "1 seed: agrees (no CI)"


def _run(rule: str, attack: str, beta: float, seed: int, acc: float) -> Run:
    config = {"aggregator": rule, "attack": attack, "num-byzantine": 2, "momentum": beta, "seed": seed}
    return Run(Path(f"{rule}-{attack}-{beta}-{seed}"), config, {"final_test_accuracy": acc / 100})


#: rule: {beta: {attack: [accuracy of seed 0, of seed 1]}} (points)
PAIRED = {
    "cwtm": {0.0: {"alie": [60, 64], "foe": [80, 82], "none": [95, 96]},
             0.99: {"alie": [95, 95], "foe": [95.5, 95.5], "none": [96, 96.5]}},
    "nnm+cwtm": {0.0: {"alie": [70, 75], "foe": [85, 83], "none": [95, 95]},
                 0.99: {"alie": [95, 95], "foe": [94, 95], "none": [96, 96]}},
}


def _paired_runs() -> list[Run]:
    return [_run(rule, attack, beta, seed, a) for rule, by_beta in PAIRED.items() for beta, by_attack in
            by_beta.items() for attack, seeds in by_attack.items() for seed, a in enumerate(seeds)]


def test_claims_are_paired_per_seed_differences_with_their_verdicts():
    runs = _paired_runs()
    rows = {(r["claim"], r["rule"]): r for r in claims_rows(runs, near=5, fail=10)}

    def ci(diffs: list[float]) -> str:
        half = 12.706 * statistics.stdev(diffs) / math.sqrt(2)
        return f"{statistics.fmean(diffs):+.1f} ± {half:.1f} (k=2)"

    # 1: none - worst per seed at beta 0.99: cwtm (96 - 95, 96.5 - 95): 1.25 ± 3.2, below 5 -> agrees
    one = rows[("1. β=0.99: no attack − worst case < 5", "cwtm")]
    assert one["value"] == ci([1.0, 1.5]) == "+1.2 ± 3.2 (k=2)" and one["verdict"] == "agrees"
    # nnm+cwtm (96 - 94, 96 - 95): 1.5 ± 6.4 straddles 5 -> inconclusive
    assert rows[("1. β=0.99: no attack − worst case < 5", "nnm+cwtm")]["verdict"] == "inconclusive"
    # 2: none - min(alie, foe) at beta 0: cwtm (35, 32) -> above 10 whatever the CI
    two = rows[("2. β=0: no attack − min(ALIE, FOE) > 10", "cwtm")]
    assert two["value"] == ci([35.0, 32.0]) and two["verdict"] == "agrees"
    # 3: worst(0.99) - worst(0): cwtm (95 - 60, 95 - 64)
    assert rows[("3. worst case β=0.99 − β=0 > 0", "cwtm")]["value"] == ci([35.0, 31.0])
    # 4: nnm+cwtm - cwtm, beta 0: (70 - 60, 75 - 64); beta 0.99: (94 - 95, 95 - 95)
    four = rows[("4. β=0: worst case nnm+rule − rule > 0", "cwtm")]
    assert four["value"] == ci([10.0, 11.0]) == "+10.5 ± 6.4 (k=2)" and four["verdict"] == "agrees"
    four = rows[("4. β=0.99: worst case nnm+rule − rule > 0", "cwtm")]
    assert four["value"] == "-0.5 ± 6.4 (k=2)" and four["verdict"] == "inconclusive"
    assert not any(rule == "nnm+cwtm" and claim.startswith("4") for claim, rule in rows)
    # claim 1 at both betas, 2 and 3 for both rules, 4 at both betas; a pooled row for claims 1-3 (two rules)
    assert len(rows) == 2 * 2 + 2 + 2 + 2 + 4
    pooled = rows[("3. worst case β=0.99 − β=0 > 0", "all rules (pooled)")]
    # cwtm (95 - 60, 95 - 64), nnm+cwtm (94 - 70, 95 - 75): four differences
    half = 3.182 * statistics.stdev([35.0, 31.0, 24.0, 20.0]) / 2
    assert pooled["value"] == f"+{(35 + 31 + 24 + 20) / 4:.1f} ± {half:.1f} (k=4)"
    assert pooled["verdict"] == "descriptive (no verdict)"  # rules share seeds: no test
    # claim 1 at beta 0, for comparison: cwtm (95 - 60, 96 - 64) -> far above 5
    assert rows[("1. β=0: no attack − worst case < 5", "cwtm")]["verdict"] == "disagrees"
    # the long table shows each seed's own difference next to the interval (the pooled rows: none)
    table = claims_markdown(runs, near=5, fail=10)
    line = next(x for x in table.splitlines() if x.startswith("| 3. worst case β=0.99 − β=0 > 0 | cwtm |"))
    assert "| s0 +35.0, s1 +31.0 |" in line
    four = "| 4. β=0.99: worst case nnm+rule − rule > 0 |"
    line = next(x for x in table.splitlines() if x.startswith(four))
    assert "| s0 -1.0, s1 +0.0 |" in line
    assert all(x.split(" | ")[4] == "—" for x in table.splitlines() if "all rules (pooled)" in x)


def test_claims_and_export_commands(results, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["export", str(results), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["claims", str(out), "--where", "aggregator=cwtm"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("| claim | rule |") and "| krum |" not in text and "| cwtm |" in text


def test_a_partial_sweep_compares_worst_cases_over_the_attacks_both_sides_ran():
    # beta 0 ran alie and foe, beta 0.99 only alie so far: claim 3 compares alie with alie, not with foe
    runs = [_run("cwtm", "alie", 0.0, 0, 60), _run("cwtm", "foe", 0.0, 0, 90),
            _run("cwtm", "alie", 0.99, 0, 95)]
    claim = "3. worst case β=0.99 − β=0 > 0"
    assert {r["claim"]: r for r in claims_rows(runs)}[claim]["value"] == "+35.0 (1 seed)"
    runs[0] = _run("cwtm", "alie", 0.0, 0, 99)  # now foe is beta 0's worst case, but beta 0.99 has no foe
    assert {r["claim"]: r for r in claims_rows(runs)}[claim]["value"] == "-4.0 (1 seed)"


def test_plot_where_draws_a_selection(results, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", str(results), "--out", str(out), "--where", "aggregator=krum", "momentum=0.9"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "heatmap_β.png"]  # 1 rule, 1 β
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        main(["plot", str(results), "--where", "krum"])
    capsys.readouterr()
    assert main(["plot", str(results), "--where", "aggregator=bulyan"]) == 2
    assert "no cell has aggregator=bulyan (values here: 'cwtm', 'krum')" in capsys.readouterr().err


def test_the_wide_claims_table_has_a_row_per_rule_and_a_column_per_claim():
    from resam_flower.experiments.claims import claims_wide_markdown

    runs = [_run("cwtm", a, b, s, acc) for (a, b, s, acc) in [
        ("alie", 0.0, 0, 60), ("none", 0.0, 0, 95), ("alie", 0.0, 1, 70), ("none", 0.0, 1, 96),
        ("alie", 0.9, 0, 94), ("none", 0.9, 0, 96)]]
    lines = claims_wide_markdown(runs).splitlines()
    assert lines[0] == ("| rule | 1. β=0: no attack − worst case < 5 | 1. β=0.9: no attack − worst case < 5"
                        " | 2. β=0: no attack − min(ALIE, FOE) > 10 | 3. worst case β=0.9 − β=0 > 0 |")
    # beta 0: (35, 26): 30.5 ± 57.2 straddles both bounds; beta 0.9: one seed (2) -> agrees, no interval
    half = 12.706 * statistics.stdev([35.0, 26.0]) / math.sqrt(2)
    assert lines[2] == f"| cwtm | +30.5 ± {half:.1f} ? | +2.0 ✓¹ | +30.5 ± {half:.1f} ? | +34.0 ✓¹ |"


def _cell(rule: str, attack: str, beta: float, seed: int, acc: float, **extra) -> Run:
    run = _run(rule, attack, beta, seed, acc)
    run.config.update(extra)
    run.path = Path("-".join([run.path.name, *(f"{k}{v}" for k, v in extra.items())]))
    return run


def test_two_cells_of_one_rule_beta_attack_and_seed_are_an_error_not_a_silent_pick(tmp_path, capsys):
    # the same krum cell at two rates (a stale rerun left beside the new one): which one wins must not depend
    # on folder order; the error names the key they differ in and how to select
    runs = [_cell("krum", "none", 0.9, 0, 92, lr=1.0), _cell("krum", "alie", 0.9, 0, 91, lr=1.0),
            _cell("krum", "none", 0.9, 0, 50, lr=2.0)]
    with pytest.raises(ValueError, match=r"both krum, β=0.9, none, seed 0; they differ in lr 1.0 vs 2.0: "
                                         r"select one setting \(--where lr=1.0\)"):
        claims_rows(runs)
    assert claims_rows(runs[:2])[0]["value"] == "+1.0 (1 seed)"
    # two Dirichlet alphas: an error until one is selected; alpha=1 selects the cells of alpha 1.0
    runs = [_cell("cwtm", a, 0.0, 0, acc, alpha=alpha) for a, acc, alpha in
            [("none", 95, 1.0), ("alie", 70, 1.0), ("none", 96, 5.0), ("alie", 90, 5.0)]]
    with pytest.raises(ValueError, match="they differ in alpha 1.0 vs 5.0"):
        claims_rows(runs)
    assert [r.config["alpha"] for r in select(runs, {"alpha": "1"})] == [1.0, 1.0]
    assert {r["claim"]: r["value"] for r in claims_rows(select(runs, {"alpha": "5"}))}[
        "1. β=0: no attack − worst case < 5"] == "+6.0 (1 seed)"


def test_claim_rows_name_the_attacks_and_the_rates_they_compare():
    runs = [_cell("krum", a, b, 0, acc, lr=lr) for a, b, acc, lr in [
        ("alie", 0.0, 80, 0.5), ("foe", 0.0, 60, 0.5), ("none", 0.0, 95, 0.5),
        ("alie", 0.9, 90, 1.0), ("none", 0.9, 93, 1.0)]]
    runs += [_cell("nnm+krum", a, b, 0, acc, lr=lr) for a, b, acc, lr in [
        ("alie", 0.0, 93, 0.5), ("sf", 0.0, 91, 0.5), ("none", 0.0, 95, 0.5),
        ("alie", 0.9, 96, 2.0), ("mimic", 0.9, 94, 2.0), ("none", 0.9, 97, 2.0)]]
    rows = {(r["claim"], r["rule"]): r for r in claims_rows(runs)}
    one = rows[("1. β=0: no attack − worst case < 5", "nnm+krum")]
    assert one["cells"] == "nnm+krum, β=0: worst of alie, sf vs none" and one["diffs"] == [4.0]
    two = rows[("2. β=0: no attack − min(ALIE, FOE) > 10", "nnm+krum")]
    assert two["cells"] == "nnm+krum, β=0: worst of alie vs none" and two["diffs"] == [2.0]
    # claim 4 compares the attacks both ran (alie) and says the rates differ at beta 0.9, not at 0
    four = rows[("4. β=0.9: worst case nnm+rule − rule > 0", "krum")]
    assert four["cells"] == "nnm+krum vs krum (lr 2 vs 1), β=0.9: worst of alie" and four["diffs"] == [6.0]
    four = rows[("4. β=0: worst case nnm+rule − rule > 0", "krum")]
    assert four["cells"] == "nnm+krum vs krum, β=0: worst of alie" and four["diffs"] == [13.0]
    # the pooled row is descriptive: an interval, no verdict, no mark in the wide table
    from resam_flower.experiments.claims import claims_wide_markdown

    pooled = rows[("1. β=0: no attack − worst case < 5", "all rules (pooled)")]
    assert pooled["verdict"] == "descriptive (no verdict)" and pooled["diffs"] == [35.0, 4.0]
    last = claims_wide_markdown(runs).splitlines()[-1]
    assert last.startswith("| all rules (pooled) | +19.5 ± 196.9 |"), last


def test_two_schedules_of_one_beta_are_two_arms_each_compared_with_beta_0():
    runs = [_cell("cwtm", a, b, 0, acc, **{"lr-schedule": sched}) for a, b, sched, acc in [
        ("alie", 0.0, "constant", 80), ("none", 0.0, "constant", 96),
        ("alie", 0.99, "constant", 85), ("none", 0.99, "constant", 94),
        ("alie", 0.99, "debiased", 92), ("none", 0.99, "debiased", 97)]]
    rows = {(r["claim"], r["rule"]): r for r in claims_rows(runs)}
    assert rows[("3. worst case β=0.99 − β=0 > 0", "cwtm")]["diffs"] == [5.0]
    assert rows[("3. worst case β=0.99 debiased − β=0 > 0", "cwtm")]["diffs"] == [12.0]
    assert rows[("1. β=0.99 debiased: no attack − worst case < 5", "cwtm")]["diffs"] == [5.0]
    assert rows[("1. β=0.99: no attack − worst case < 5", "cwtm")]["diffs"] == [9.0]
    assert rows[("2. β=0: no attack − min(ALIE, FOE) > 10", "cwtm")]["diffs"] == [16.0]


def test_claims_report_and_plot_read_several_folders_together(results, tmp_path, capsys):
    import shutil

    for rule in ("cwtm", "krum"):  # one sweep's cells split in two folders, as a grid and an extra arm
        for cell in results.glob(f"{rule}__*"):
            shutil.copytree(cell, tmp_path / rule / cell.name)
    both = [str(tmp_path / "cwtm"), str(tmp_path / "krum")]
    for command in ("claims", "report"):
        assert main([command, str(results)] + (["--where"] if command == "report" else [])) == 0
        whole = capsys.readouterr().out
        assert main([command, *both]) == 0
        assert capsys.readouterr().out == whole and "| krum |" in whole and "| cwtm |" in whole
    assert not (tmp_path / "cwtm" / "report.md").exists()
    assert main(["plot", *both, "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "heatmap_β.png").exists()
    assert main(["plot", *both]) == 2  # several folders: no default output folder
    assert "give the output folder (--out)" in capsys.readouterr().err


def test_the_claims_summary_counts_seeds_on_the_claims_side_and_lists_rules_by_verdict(capsys):
    from resam_flower.experiments.claims import claims_summary_markdown

    lines = claims_summary_markdown(_paired_runs()).splitlines()  # PAIRED: the differences worked out below
    side = "per-seed differences on the claim's side"
    # claim 1 at 0.99: cwtm (1, 1.5) -> 1.25 ± 12.706 * 0.354 = 3.2, below 5; nnm+cwtm (2, 1): 1.5 ± 6.4
    assert lines[1] == (f"- **1. β=0.99: no attack − worst case < 5** (2 seeds a rule) — {side}: rules alone "
                        "2 of 2 (+1.0 to +1.5), behind NNM 2 of 2 (+1.0 to +2.0). Agrees (1): "
                        "cwtm +1.2 ± 3.2. Inconclusive (1): nnm+cwtm +1.5 ± 6.4.")
    # claim 1 at 0: cwtm (35, 32): 33.5 ± 19.1, above 5; nnm+cwtm (25, 20): 22.5 ± 31.8 straddles it
    assert lines[0] == (f"- **1. β=0: no attack − worst case < 5** (2 seeds a rule) — {side}: rules alone "
                        "0 of 2 (+32.0 to +35.0), behind NNM 0 of 2 (+20.0 to +25.0). Disagrees (1): "
                        "cwtm +33.5 ± 19.1. Inconclusive (1): nnm+cwtm +22.5 ± 31.8.")
    # claim 4 (no NNM group: its rows are the rules alone): beta 0 (10, 11); beta 0.99 (-1, 0)
    assert lines[-2:] == [
        f"- **4. β=0: worst case nnm+rule − rule > 0** (2 seeds a rule) — {side}: 2 of 2 (+10.0 to +11.0)."
        " Agrees (1): cwtm +10.5 ± 6.4.",
        f"- **4. β=0.99: worst case nnm+rule − rule > 0** (2 seeds a rule) — {side}: 0 of 2 (-1.0 to +0.0)."
        " Inconclusive (1): cwtm -0.5 ± 6.4."]
    assert not any("pooled" in line for line in lines) and len(lines) == 2 + 1 + 1 + 2

    # one seed: provisional (no interval); a rule without its no-attack cell: not run
    runs = [_run("cwtm", a, b, 0, x) for a, b, x in [("alie", 0.0, 60), ("none", 0.0, 95), ("alie", 0.9, 93),
                                                    ("none", 0.9, 96)]] + [_run("cwmed", "alie", 0.9, 0, 50)]
    line = claims_summary_markdown(runs).splitlines()[1]
    assert line == (f"- **1. β=0.9: no attack − worst case < 5** (1 seed a rule) — {side}: 1 of 1 "
                    "(+3.0 to +3.0). Provisional (1): cwtm +3.0. Not run (1): cwmed.")
    with pytest.raises(SystemExit):
        main(["claims", "x", "--wide", "--summary"])  # one form at a time
    assert "not allowed with argument" in capsys.readouterr().err
