"""``flwr run .`` (Flower 1.42): the app's pyproject, the FAB it ships, a real run in the simulation runtime.

Fast checks: ``[tool.flwr.app.config]`` holds every knob of ``ExperimentConfig`` with its default (a
``--run-config`` key missing there is rejected by Flower), no legacy ``[tool.flwr.federations]`` table
(Flower 1.42 would migrate it and rewrite pyproject.toml), and the FAB built by Flower's own code holds the
package and nothing else (no .venv, results, data caches, tests, credentials).

Slow check: ``flwr run . --stream`` from the repository root with a temporary ``FLWR_HOME`` (the developer's
``~/.flwr`` is never read or written), against the ``:local:`` SuperLink of the default Flower config, with
``--federation-config`` and ``--run-config`` overrides; the run writes a summary with a sensible accuracy.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_files

from resam_flower.app.config import ExperimentConfig
from resam_flower.deploy.processes import wait_until
from tests.app.local_superlink import local_superlink

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
BIN = Path(sys.executable).parent


def _flwr_tables() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]


def test_run_config_declares_every_experiment_knob_with_its_default():
    declared = _flwr_tables()["app"]["config"]
    defaults = ExperimentConfig()
    fields = [f.name for f in dataclasses.fields(defaults) if f.name != "extra"]
    expected = {name.replace("_", "-"): getattr(defaults, name) for name in fields}
    assert sorted(set(expected) - set(declared)) == [], "keys --run-config could not override"
    assert sorted(set(declared) - set(expected)) == [], "keys ExperimentConfig would not read"
    wrong = {k: (declared[k], v) for k, v in expected.items()
             if (declared[k], type(declared[k])) != (v, type(v))}
    assert wrong == {}, "pyproject value vs ExperimentConfig default"
    ExperimentConfig.from_run_config(declared)  # the declared defaults validate


def test_no_legacy_federations_table_and_components_resolve():
    flwr = _flwr_tables()
    assert "federations" not in flwr, "Flower 1.42 migrates this table out of pyproject.toml on `flwr run`"
    components = flwr["app"]["components"]
    assert components == {
        "serverapp": "resam_flower.app.server_app:app",
        "clientapp": "resam_flower.app.client_app:app",
    }


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_fab_ships_the_package_and_nothing_else():
    package = {p.relative_to(REPO).as_posix(): p for p in (REPO / "resam_flower").rglob("*.py")}
    package = {k: v for k, v in package.items() if "__pycache__" not in k}
    deploy = {k for k in package if k.startswith("resam_flower/deploy/")}
    assert deploy, "the operator's tooling exists in the repository"
    noise = {
        ".venv/lib/python3.11/site-packages/torch/__init__.py": b"",
        ".venv/pyvenv.cfg.toml": b"",
        "results/run/summary.json": b"{}",
        "runs/run/config.json": b"{}",
        "data-cache/mnist/meta.json": b"{}",
        "tests/app/test_flwr_run.py": b"",
        "tests/conftest.py": b"",
        "tests/flower_helpers.py": b"",
        "benchmarks/aggregators.py": b"",
        "docs/DEPLOYMENT.md": b"# doc",
        "README.md": b"# readme",
        "scripts/generate_certs.sh": b"",
        "certs/ca.crt": b"",
        "certs/supernode-1": b"",
        ".flwr/config.toml": b"",
        "resam_flower/__pycache__/flat.cpython-311.pyc": b"",
    }
    files = {"pyproject.toml": PYPROJECT, ".gitignore": REPO / ".gitignore", **package, **noise}
    fab, _ = build_fab_from_files(files)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    assert names == {"pyproject.toml", ".info/CONTENT", *(set(package) - deploy)}  # no deployment tooling
    shipped = tomllib.loads(zipfile.ZipFile(io.BytesIO(fab)).read("pyproject.toml").decode())
    assert shipped["tool"]["flwr"]["app"]["config"] == _flwr_tables()["app"]["config"]


@pytest.mark.slow
def test_flwr_run_dot_in_the_local_simulation_runtime(tmp_path):
    flwr, superlink = BIN / "flwr", BIN / "flower-superlink"
    if not flwr.exists() or not superlink.exists():
        pytest.fail(f"flwr CLI not installed next to {sys.executable}: run `make setup`", pytrace=False)
    pyproject_before = PYPROJECT.read_bytes()
    results = tmp_path / "results"
    with local_superlink(tmp_path) as (procs, home):
        run_config = (
            "num-server-rounds=10 dataset='digits' model='mlp' num-clients=4 num-byzantine=1 attack='sf' "
            f"aggregator='nnm+cwtm' lr=0.5 batch-size=32 eval-every=5 results-dir='{results}' run-name='cli'"
        )
        run = procs.start(
            "flwr-run",
            [
                str(flwr), "run", ".", "--stream",
                "--federation-config", "num-supernodes=4 client-resources-num-cpus=1",
                "--run-config", run_config,
            ],
            cwd=REPO,
        )
        wait_until(lambda: run.poll() is not None, 400, "flwr run . --stream to finish")
        log = procs.log("flwr-run")
        assert run.returncode == 0, log[-3000:]

    assert PYPROJECT.read_bytes() == pyproject_before, "flwr run must not rewrite pyproject.toml"
    assert (home / "config.toml").exists(), "the Flower config was created in the temporary FLWR_HOME"
    assert "Successfully started run" in log and "(4 simulated SuperNodes)" in log, log[-3000:]
    summary = json.loads((results / "cli" / "summary.json").read_text())
    assert summary["config"]["num-clients"] == 4 and summary["config"]["dataset"] == "digits"
    assert summary["rounds"] == 10 and summary["skipped_rounds"] == 0
    assert len(summary["byzantine_nodes"]) == 1
    assert summary["initial_test_accuracy"] < 0.3
    assert summary["final_test_accuracy"] > 0.5, summary
