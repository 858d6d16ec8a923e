"""The benchmark scripts run (small inputs) and judge their targets as BENCHMARKS.md states them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_floor_verdicts_of_the_distance_rules():
    agg = _load("aggregators")
    floor = {"gram": 1.5, "w @ x": 0.8}
    # Krum's floor is the Gram: 1.9 / 1.5 = 1.27x passes, 2.0 / 1.5 = 1.33x fails
    assert agg._verdict("krum", 1.9, 30.0, "cpu", floor) == "PASS"
    assert agg._verdict("krum", 2.0, 30.0, "cpu", floor) == "FAIL (1.33x > 1.3x its floor)"
    # MultiKrum's is the Gram + w @ x = 2.3: 2.95 / 2.3 = 1.28x passes, 3.1 / 2.3 = 1.35x fails
    assert agg._verdict("multikrum", 2.95, 30.0, "cpu", floor) == "PASS"
    assert agg._verdict("multikrum", 3.1, 30.0, "cpu", floor).startswith("FAIL (1.35x")
    # the ByzFL target still applies
    assert agg._verdict("krum", 1.6, 9.0, "cpu", floor) == "FAIL (9.0x < 10x ByzFL)"


def test_aggregators_benchmark_runs_every_distance_rule_against_byzfl(capsys):
    try:
        import byzfl  # noqa: F401
    except ImportError:
        pytest.fail("byzfl is missing: install the dev dependencies with `make setup`")
    agg = _load("aggregators")
    rules = ["krum", "multikrum", "monna", "cc", "cwtm"]
    assert agg.main(["--d", "4000", "--repeats", "3", "--byzfl-repeats", "1", "--no-memory", "--no-flower",
                     "--threads", "1", "--rules", *rules]) == 0
    out = capsys.readouterr().out
    assert "Floors (x read pass): the rules' Gram" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for rule in rules:
        cells = [c.strip() for c in rows[rule].split("|")[1:-1]]
        assert float(cells[1]) > 0 and cells[3] not in ("", "—"), rows[rule]  # ours (ms), ByzFL (ms)
        assert cells[-1].startswith(("PASS", "FAIL")), rows[rule]
