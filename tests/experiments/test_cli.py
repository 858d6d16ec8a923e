"""The `resam` command line: parsing, dry runs, report/plot on fake results, kappa, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resam_flower.cli import build_parser, main
from resam_flower.experiments import Sweep, run_sweep
from tests.experiments.conftest import BASE, write_sweep_file

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_experiment_file_expands(capsys, tmp_path):
    counts = {}
    for path in sorted((ROOT / "simulations").glob("*.toml")):
        assert main(["sweep", str(path), "--dry-run", "--results", str(tmp_path)]) == 0
        counts[path.stem] = int(capsys.readouterr().out.strip().splitlines()[-1].split()[0])
    assert counts["tiny"] == 4 and counts["demo"] == 10 and counts["paper_mnist"] == 432
    # the reproduction: 12 rules x 6 attacks x 3 betas x 3 seeds + the 9 reference cells; its tuning; FMNIST
    # (12 rules x ALIE, FOE, none, + sf and mimic for the 6 NNM rules, + mimic for Krum, x 3 betas x 3 seeds,
    # + 9 references) and Dirichlet (the same per alpha, ALIE and none for all, FOE and mimic for Krum); the
    # tuning has 29 constant/inverse cells, 8 bias-corrected ones and 4 for Krum
    assert counts["lab_mnist"] == 12 * 6 * 3 * 3 + 9 and counts["lab_mnist_lr"] == 29 + 8 + 4
    assert counts["lab_mnist_debiased"] == 12 * 6 * 3 + 3  # beta 0.99 bias-corrected: grid and references
    assert counts["lab_fmnist"] == (12 * 3 + 6 * 2 + 1) * 3 * 3 + 9
    assert counts["lab_mnist_dirichlet"] == ((12 * 2 + 6 * 2 + 2) * 3 * 3 + 9) * 2


#: Krum's own rate per momentum arm (beta, lr schedule), from its no-attack tuning (lab_mnist_lr.toml).
KRUM_RATES = {(0.0, "constant"): 0.5, (0.9, "constant"): 1.0, (0.99, "constant"): 1.0,
              (0.99, "debiased"): 0.25}
#: The momentum arms of each reproduction file: the MNIST grid at constant rates and its bias-corrected beta =
#: 0.99 arm; Fashion-MNIST and Dirichlet with the bias-corrected beta = 0.99 only.
ARMS = {
    "lab_mnist": [(0.0, "constant"), (0.9, "constant"), (0.99, "constant")],
    "lab_mnist_debiased": [(0.99, "debiased")],
    "lab_fmnist": [(0.0, "constant"), (0.9, "constant"), (0.99, "debiased")],
    "lab_mnist_dirichlet": [(0.0, "constant"), (0.9, "constant"), (0.99, "debiased")],
}


@pytest.mark.parametrize("name", list(ARMS))
def test_reproduction_files_run_krum_at_its_own_rates_and_cover_the_worst_attacks(name, tmp_path):
    """Krum fails without attack at CWTM's rates for beta > 0 (lab_mnist_krum_cwtm_rate): never run it there.
    Each rule runs its worst-case attacks of IID MNIST (ALIE; sf/mimic for NNM rules; FOE/mimic for Krum), in
    every momentum arm of the file; the other rules run at CWTM's tuned rate of the arm."""
    from resam_flower.experiments import load_sweep

    cells = [c.config for c in load_sweep(ROOT / "simulations" / f"{name}.toml").cells(tmp_path)]
    arm = {id(c): (c["momentum"], c["lr-schedule"]) for c in cells}
    assert sorted(set(arm.values())) == ARMS[name]
    cwtm_rates = {(0.0, "constant"): 0.5, (0.9, "constant"): 2.0, (0.99, "constant"): 8.0,
                  (0.99, "debiased"): 1.0}
    for c in cells:
        expected = KRUM_RATES if c["aggregator"] == "krum" else cwtm_rates
        assert c["lr"] == expected[arm[id(c)]], (name, c["aggregator"], arm[id(c)], c["lr"])
    runs = {(c["aggregator"], c["attack"], arm[id(c)]) for c in cells}
    worst = {"krum": ["alie", "foe", "mimic"], "cwtm": ["alie"], "nnm+cwmed": ["alie", "sf", "mimic"]}
    for rule, attacks in worst.items():
        for attack in [*attacks, "none"]:
            assert all((rule, attack, a) in runs for a in ARMS[name]), (name, rule, attack)


def test_report_and_plot_commands(tmp_path, fake_simulate, capsys):
    run_sweep(
        Sweep("c", BASE, {"aggregator": ["cwtm", "mda"], "momentum": [0.0, 0.9]}),
        tmp_path,
        progress=False,
        share_ray=False,
    )
    assert main(["report", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[4].startswith("| rule | β |") and (tmp_path / "c" / "report.md").exists()
    assert main(["plot", str(tmp_path / "c"), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(Path(p).is_file() and p.endswith(".png") for p in printed)


def test_kappa_command(capsys):
    assert (
        main(
            [
                "kappa",
                "--n",
                "5",
                "--f",
                "1",
                "--d",
                "1",
                "--rules",
                "cwtm",  # README style: several arguments, or commas (below)
                "mean,mda",
                "--restarts",
                "2",
                "--steps",
                "20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| cwtm | 5 | 1 | 1 |" in out and "(unbounded)" in out and "| 0.25 |" in out
    assert len([line for line in out.splitlines() if line.startswith("| ")]) == 1 + 3  # header + 3 rules


def test_dry_run_lists_only_the_selected_cells(capsys, tmp_path):
    path = ROOT / "simulations" / "lab_mnist_dirichlet.toml"
    dry = ["sweep", str(path), "--dry-run", "--results", str(tmp_path)]
    assert main([*dry, "--where", "seed=2", "alpha=5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("117 cells")  # one seed of one alpha: 702 / 3 / 2
    assert all("a5__" in line and "__s2__" in line for line in lines[:-1]) and len(lines) == 118
    assert main([*dry, "--only", "__s0", "a1__"]) == 0
    # either string: seed 0 or alpha = 1, 234 + 351 - 117 cells
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("468 cells")
    assert main(["sweep", str(path), "--dry-run", "--where", "sed=0"]) == 2
    assert "'sed' is not a run-config key of sweep 'lab_mnist_dirichlet'" in capsys.readouterr().err


def test_sweep_runs_only_the_cells_where_selects(tmp_path, fake_simulate):
    path = tmp_path / "w.toml"
    write_sweep_file(path, "w", BASE, 'aggregator = ["cwtm", "mda"]\nmomentum = [0.0, 0.9]\n', engine="ray")
    argv = ["sweep", str(path), "--results", str(tmp_path), "--jobs", "1", "--no-progress", "--no-report"]
    assert main([*argv, "--where", "momentum=0.9", "--where", "aggregator=mda"]) == 0  # repeated: both hold
    assert [(c["aggregator"], c["momentum"]) for c in fake_simulate] == [("mda", 0.9)]
    with pytest.raises(SystemExit, match="--where seed: given twice"):
        main([*argv, "--where", "seed=0", "--where", "seed=1"])
    assert len(fake_simulate) == 1


def test_the_lab_files_run_every_cell_on_seeds_0_1_and_2():
    from resam_flower.experiments import load_sweep

    for name in ("lab_mnist", "lab_mnist_debiased", "lab_fmnist", "lab_mnist_dirichlet"):
        seeds: dict[str, set[int]] = {}
        for cell in load_sweep(ROOT / "simulations" / f"{name}.toml").cells(ROOT / "unused"):
            rest = json.dumps({k: v for k, v in cell.config.items() if k not in ("seed", "run-name")})
            seeds.setdefault(rest, set()).add(cell.config["seed"])
        assert set(map(frozenset, seeds.values())) == {frozenset({0, 1, 2})}, name


def test_errors_exit_with_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[base]\nnum-clients = 4\nnum-byzantine = 2\n")
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resam sweep: error: sweep 'bad', cell default:") and "num-byzantine=2" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    # a folder or a missing path where a file belongs: a message naming it, not a traceback
    for command in ("sweep", "progress", "tables"):
        assert main([command, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"resam {command}: error:") and str(tmp_path) in err and "folder" in err
        assert main([command, str(tmp_path / "missing.toml")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"resam {command}: error: no ") and "missing.toml" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nope"])


def test_engine_and_jobs_defaults(tmp_path, capsys, monkeypatch, fake_simulate):
    import os

    from resam_flower.cli import sweep_engine_and_jobs

    s = Sweep("e", BASE, {"aggregator": ["cwtm", "mda"]})
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    assert sweep_engine_and_jobs(s, None, None) == ("inprocess", 12)  # every core, in-process
    assert sweep_engine_and_jobs(s, None, 3) == ("inprocess", 3)
    assert sweep_engine_and_jobs(s, "ray", None) == ("ray", 1)  # Ray spreads one cell over the machine
    s.engine = "ray"
    assert sweep_engine_and_jobs(s, None, None) == ("ray", 1)
    assert sweep_engine_and_jobs(s, "inprocess", None) == ("inprocess", 12)
    mixed = Sweep("m", BASE, {"aggregator": ["cwtm"]}, include=[{"aggregator": "mda", "engine": "ray"}])
    assert sweep_engine_and_jobs(mixed, None, None) == ("inprocess+ray", 12)  # a pool, then the Ray cell
    assert sweep_engine_and_jobs(mixed, "ray", None) == ("ray", 1)
    assert sweep_engine_and_jobs(Sweep("r", {**BASE, "engine": "ray"}, {}), None, None) == ("ray", 1)
    toml = tmp_path / "e.toml"
    toml.write_text('[base]\ndataset = "digits"\nnum-clients = 6\nnum-byzantine = 1\n[grid]\nseed = [0, 1]\n')
    assert main(["sweep", str(toml), "--engine", "ray", "--jobs", "2", "--results", str(tmp_path)]) == 2
    assert "one cell at a time" in capsys.readouterr().err and not fake_simulate
    args = ["sweep", str(toml), "--engine", "ray", "--results", str(tmp_path), "--no-report", "--no-progress"]
    assert main(args) == 0 and len(fake_simulate) == 2  # Ray: simulation.simulate, one cell at a time
    assert "(ray engine, 1 job(s)): 2 cells run, 0 already finished, 0 failed" in capsys.readouterr().out
    assert build_parser().parse_args(["sweep", "f.toml"]).threads_per_cell == 1
