"""Experiment files -> cells: grid product, zipped groups, include/exclude, names, validation."""

from __future__ import annotations

import textwrap

import pytest

from resam_flower.experiments.grid import Sweep, cell_name, expand, load_sweep, normalized_config

BASE = {"dataset": "digits", "model": "mlp", "num-clients": 6, "num-byzantine": 1, "num-server-rounds": 3}


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_product_of_lists_and_scalars(tmp_path):
    sweep = Sweep("s", BASE, {"aggregator": ["cwtm", "nnm+cwtm"], "momentum": [0.0, 0.9, 0.99], "seed": 3})
    cells = expand(sweep, tmp_path)
    assert len(cells) == 6
    assert {(c.config["aggregator"], c.config["momentum"]) for c in cells} == {
        (a, b) for a in ("cwtm", "nnm+cwtm") for b in (0.0, 0.9, 0.99)
    }
    assert all(c.config["seed"] == 3 and c.config["dataset"] == "digits" for c in cells)
    # the scalar does not vary, so it is not in the names; what varies is
    assert {c.name for c in cells} == {
        f"{a}__b{b}" for a in ("cwtm", "nnm_cwtm") for b in ("0", "0.9", "0.99")
    }
    for c in cells:
        assert c.config["results-dir"] == str(tmp_path / "s") and c.config["run-name"] == c.name
        assert set(c.varying) == {"aggregator", "momentum"}


def test_group_tables_vary_keys_together(tmp_path):
    grid = {
        "setting": [{"num-clients": 6, "num-byzantine": 1}, {"num-clients": 9, "num-byzantine": 2}],
        "momentum": [0.0, 0.9],
    }
    cells = expand(Sweep("s", BASE, grid), tmp_path)
    assert len(cells) == 4  # zipped: 2 settings, not 2 x 2 x 2
    assert {(c.config["num-clients"], c.config["num-byzantine"]) for c in cells} == {(6, 1), (9, 2)}
    assert "n6__f1__b0" in {c.name for c in cells}


def test_include_and_exclude(tmp_path):
    sweep = Sweep(
        "s",
        BASE,
        {"aggregator": ["mean", "cwtm"], "momentum": [0.0, 0.9]},
        include=[{"aggregator": "cwtm", "attack": "none", "momentum": [0.0, 0.9]}],
        exclude=[{"aggregator": "mean", "momentum": 0.0}],
    )
    cells = expand(sweep, tmp_path)
    keys = {(c.config["aggregator"], c.config["momentum"], c.config.get("attack", "alie")) for c in cells}
    assert ("mean", 0.0, "alie") not in keys
    assert ("mean", 0.9, "alie") in keys and ("cwtm", 0.0, "none") in keys and ("cwtm", 0.9, "none") in keys
    assert len(cells) == 5 and len({c.name for c in cells}) == 5


def test_invalid_cell_fails_before_running(tmp_path):
    sweep = Sweep("s", BASE, {"num-byzantine": [1, 3], "aggregator": ["cwtm"]})  # cwtm needs n > 2f: 6 > 6 no
    with pytest.raises(ValueError, match=r"cell .*f3.*n > 2f|cell .*f3.*num-clients"):
        expand(sweep, tmp_path)


def test_load_sweep_file_and_errors(tmp_path):
    path = write(
        tmp_path,
        """
        exclude = [{attack = "foe", momentum = 0.9}]  # 0.9: the default, which exclude entries see
        [sweep]
        name = "demo-x"
        results = "out"
        [base]
        dataset = "digits"
        model = "mlp"
        num-clients = 6
        num-byzantine = 1
        [grid]
        attack = [{attack = "alie", attack-params = "z=1.5"}, {attack = "foe", attack-params = ""}]
        [[include]]
        attack = "none"
        """,
    )
    sweep = load_sweep(path)
    assert sweep.name == "demo-x" and sweep.directory() == __import__("pathlib").Path("out/demo-x")
    names = [c.name for c in sweep.cells(tmp_path)]
    assert names == ["alie__z-1.5", "none"]
    bad = write(tmp_path, "[sweep]\nname = 'x'\n[grids]\na = 1\n", "bad.toml")
    with pytest.raises(ValueError, match="unknown top-level keys"):
        load_sweep(bad)
    with pytest.raises(ValueError, match=r"sweep 's', cell \{'momentum': 'a'\}: run config momentum must"):
        expand(Sweep("s", BASE, {"momentum": [0.0, "a"]}), tmp_path)
    with pytest.raises(ValueError, match="empty list"):
        expand(Sweep("s", BASE, {"momentum": []}), tmp_path)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (Sweep("s", {**BASE, "momentun": 0.9}, {}),
         r"\[base\]: 'momentun' is no run-config key; did you mean 'momentum'"),
        (Sweep("s", BASE, {"agregator": ["cwtm", "mean"]}),
         r"\[grid\]: 'agregator' is no run-config key.*'aggregator'"),
        (Sweep("s", BASE, {"x": [{"num-client": 6}]}),
         r"\[grid\] group 'x': 'num-client' is no run-config key"),
        (Sweep("s", BASE, {}, include=[{"seed": 1}, {"agregator": "krum"}]),
         r"\[\[include\]\] #2: 'agregator'"),
        (Sweep("s", BASE, {"seed": [0, 1]}, exclude=[{"sed": 1}]),
         r"exclude entry #1: 'sed' is no run-config key"),
        # a group that sets a key another axis varies would override it
        (Sweep("s", BASE, {"aggregator": ["cwtm", "mean"],
                           "setting": [{"aggregator": "krum", "seed": 1}]}),
         r"\[grid\]: 'aggregator' is set by both 'aggregator' and 'setting'"),
        # an exclude entry that removes nothing is a mistake (seed 0 is the default; no momentum is 0.5)
        (Sweep("s", BASE, {"seed": [0, 1]}, exclude=[{"seed": 0}, {"momentum": 0.5}]),
         r"exclude entry #2 \{'momentum': 0.5\} matches no cell"),
    ],
)
def test_a_grid_that_would_not_run_as_written_is_an_error(tmp_path, sweep, message):
    with pytest.raises(ValueError, match=message):
        expand(sweep, tmp_path)


def test_without_a_grid_the_includes_are_the_cells(tmp_path):
    sweep = Sweep("s", BASE, {}, include=[{"aggregator": "cwtm"}, {"aggregator": "cwmed", "seed": [0, 1]}])
    assert [(c.name, c.config["aggregator"], c.config.get("seed", 0)) for c in expand(sweep, tmp_path)] == [
        ("cwtm", "cwtm", 0), ("cwmed__s0", "cwmed", 0), ("cwmed__s1", "cwmed", 1)]  # no [base]-only cell
    assert [c.name for c in expand(Sweep("s", BASE, {}), tmp_path)] == ["default"]


def test_known_extra_keys_and_data_options_are_accepted(tmp_path):
    grid = {"gamma": [0.2, 0.5], "data-test-fraction": 0.3, "classes-per-partition": 3, "engine": "inprocess"}
    assert [c.name for c in expand(Sweep("s", BASE, grid), tmp_path)] == ["gamma-0.2", "gamma-0.5"]


def test_exclude_misplaced_under_grid_and_unknown_sweep_keys_are_errors(tmp_path):
    # TOML puts `exclude` written after [grid] into the grid: it would replace the aggregators it meant to cut
    text = ('[base]\ndataset = "digits"\n[grid]\naggregator = ["cwtm", "mean"]\n'
            'exclude = [{aggregator = "mean"}]\n')
    with pytest.raises(ValueError, match=r"'exclude' is a list of tables inside \[grid\].*before \[sweep\]"):
        load_sweep(write(tmp_path, text)).cells(tmp_path)
    with pytest.raises(ValueError, match=r"\[sweep\] 'result' is not one of name, results, description"):
        load_sweep(write(tmp_path, '[sweep]\nresult = "out"\n[base]\ndataset = "digits"\n'))
    with pytest.raises(ValueError, match=r"exclude must be a list of tables .*got \['mean'\]"):
        load_sweep(write(tmp_path, 'exclude = ["mean"]\n[base]\ndataset = "digits"\n'))
    with pytest.raises(ValueError, match=r"sweep must be a table \(\[sweep\]\), got 'x'"):
        load_sweep(write(tmp_path, 'sweep = "x"\n[base]\ndataset = "digits"\n'))


def test_cells_that_run_the_same_experiment_are_one_cell(tmp_path):
    # the include restates the default seed, the second one a value of [base]: both are the grid's cells
    sweep = Sweep("s", {**BASE, "attack": "alie"}, {"aggregator": ["cwtm", "mean"]},
                  include=[{"aggregator": "cwtm", "seed": 0}, {"aggregator": "mean", "attack": "alie"},
                           {"aggregator": "cwtm", "seed": 1}])
    cells = expand(sweep, tmp_path)
    assert [c.name for c in cells] == ["cwtm", "mean", "cwtm__s1"]  # a key a cell leaves out: not in its name
    assert [(c.config["aggregator"], c.config.get("seed", 0)) for c in cells] == [("cwtm", 0), ("mean", 0),
                                                                                  ("cwtm", 1)]
    # without the seed-1 include, nothing varies but the rule: the restated cells add nothing, not even a name
    sweep.include = sweep.include[:2]
    assert [c.name for c in expand(sweep, tmp_path)] == ["cwtm", "mean"]
    # one experiment however its values are spelled (TOML's 0 for 0.0)
    spelled = Sweep("s", BASE, {"momentum": [0.0, 0.9]}, include=[{"momentum": 0}])
    assert [c.name for c in expand(spelled, tmp_path)] == ["b0", "b0.9"]
    # an include that restates a cell to pick its engine: that cell, on that engine
    sweep.include = [{"aggregator": "mean", "engine": "ray"}]
    assert [(c.name, c.engine) for c in expand(sweep, tmp_path)] == [("cwtm", ""), ("mean", "ray")]
    sweep.include.append({"aggregator": "mean", "engine": "inprocess"})
    with pytest.raises(ValueError, match="is asked on engine 'inprocess' and on 'ray'"):
        expand(sweep, tmp_path)
    with pytest.raises(ValueError, match="exclude entry #1: 'engine' is no run-config key"):
        expand(Sweep("s", BASE, {"seed": [0, 1]}, exclude=[{"engine": "ray"}]), tmp_path)


def test_cell_names_are_filesystem_safe_and_ordered():
    assert cell_name({"momentum": 0.9, "aggregator": "bucketing(s=2)+krum"}) == "bucketing-s-2-_krum__b0.9"
    assert cell_name({"weight-decay": 0.01}) == "weightdecay-0.01"
    assert cell_name({}) == "default"


def test_normalized_config_fills_defaults_and_ignores_results_dir():
    a = normalized_config({**BASE, "lr": 1, "results-dir": "a"})
    b = normalized_config({**BASE, "lr": 1.0, "results-dir": "b", "momentum": 0.9})  # 0.9 is the default
    assert a == b
    assert normalized_config({**BASE, "lr": 0.5}) != a


def test_the_sweep_file_picks_the_engine(tmp_path):
    grid = '[base]\ndataset = "digits"\nnum-clients = 6\nnum-byzantine = 1\n'
    assert load_sweep(write(tmp_path, grid)).engine == ""  # the runner's default
    assert load_sweep(write(tmp_path, '[sweep]\nengine = "inprocess"\n' + grid)).engine == "inprocess"
    assert load_sweep(write(tmp_path, '[sweep]\nengine = "ray"\n' + grid)).engine == "ray"
    with pytest.raises(ValueError, match="engine = 'threads'; expected one of ray, inprocess"):
        load_sweep(write(tmp_path, '[sweep]\nengine = "threads"\n' + grid))
