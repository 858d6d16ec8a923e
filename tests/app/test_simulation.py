"""One experiment end to end: ``run_experiment``'s per-round callback on an in-process grid (fast), and real
Flower simulations on the Ray backend (slow: few rounds, small data): the model learns, files are written,
``on_round`` follows the rounds and a failing callback stops the run with a clear error."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from resam_flower.app.config import ExperimentConfig
from resam_flower.app.server_app import RoundCallbackError, run_experiment
from resam_flower.app.worker import make_client_app
from resam_flower.simulation import simulate
from resam_flower.strategies.checkpoint import Checkpointer
from tests.reliability.inline_grid import InlineGrid

INLINE = {
    "dataset": "digits", "model": "mlp", "num-clients": 5, "num-byzantine": 1, "attack": "sf",
    "aggregator": "cwtm", "momentum": 0.9, "lr": 0.5, "batch-size": 16, "num-server-rounds": 5,
    "eval-every": 2, "seed": 1,
}  # fmt: skip


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("flwr").setLevel(logging.ERROR)


def run_inline(cfg: dict, on_round=None) -> dict:
    c = ExperimentConfig.from_run_config(cfg)
    return run_experiment(InlineGrid(make_client_app(), c.num_clients), c, on_round=on_round)


def csv_rows(run_dir) -> list[dict]:
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def as_csv(row: dict) -> dict:
    """A callback row as csv.DictReader reads it back from metrics.csv."""
    return {k: "" if v is None else str(v) for k, v in row.items()}


def test_on_round_gets_every_round_and_its_metrics_csv_row(tmp_path):
    seen: list[tuple[int, dict]] = []
    summary = run_inline(
        dict(INLINE, **{"results-dir": str(tmp_path), "run-name": "r"}),
        on_round=lambda rnd, row: seen.append((rnd, row)),
    )
    assert [rnd for rnd, _ in seen] == [1, 2, 3, 4, 5]
    assert all(row["round"] == rnd for rnd, row in seen)
    evaluated = [rnd for rnd, row in seen if "test-accuracy" in row]
    assert evaluated == [2, 4, 5]  # every eval-every rounds and the last one
    assert {"valid", "excluded", "lr", "aggregate-norm", "skipped", "byzantine-replies"} <= set(seen[0][1])
    assert seen[-1][1]["test-accuracy"] == summary["final_test_accuracy"]
    rows = csv_rows(tmp_path / "r")
    # the same rows as metrics.csv (the file's columns are the union of the rows' keys)
    assert [{k: v for k, v in r.items() if v != "" or k == "skipped"} for r in rows] == [
        as_csv(row) for _, row in seen
    ]


def test_a_failing_callback_stops_the_run_then_resume_continues_the_round_numbers(tmp_path):
    cfg = dict(INLINE, **{"results-dir": str(tmp_path), "run-name": "r", "checkpoint-every": 3})
    seen: list[int] = []

    def progress_bar(rnd: int, row: dict) -> None:
        seen.append(rnd)
        if rnd == 3:
            raise KeyError("display")

    with pytest.raises(
        RoundCallbackError, match=r"progress_bar raised KeyError: 'display' at round 3"
    ) as err:
        run_inline(cfg, on_round=progress_bar)
    assert isinstance(err.value.__cause__, KeyError)
    assert seen == [1, 2, 3]  # stopped at once: no round 4
    run_dir = tmp_path / "r"
    assert not (run_dir / "summary.json").exists()  # a stopped run is not a finished one
    assert Checkpointer.load(run_dir / "checkpoint.pt").round == 3

    resumed: list[int] = []
    summary = run_inline(dict(cfg, resume=True), on_round=lambda rnd, row: resumed.append(row["round"]))
    assert summary["resumed_from_round"] == 3 and resumed == [4, 5]  # global round numbers, no round 0
    assert summary["rounds"] == 5 and len(csv_rows(run_dir)) == 5


@pytest.mark.slow
def test_resam_learns_under_attack_on_ray(tmp_path):
    seen: list[tuple[int, dict]] = []
    summary = simulate(
        {
            "dataset": "digits", "model": "mlp", "num-clients": 6, "num-byzantine": 1, "attack": "alie",
            "aggregator": "nnm+cwtm", "momentum": 0.9, "lr": 0.5, "batch-size": 16, "num-server-rounds": 25,
            "eval-every": 5, "results-dir": str(tmp_path), "run-name": "ray-run",
        },
        on_round=lambda rnd, row: seen.append((rnd, row)),
    )  # fmt: skip
    assert summary["initial_test_accuracy"] < 0.3
    assert summary["final_test_accuracy"] > 0.75
    assert summary["rounds"] == 25 and summary["skipped_rounds"] == 0
    assert len(summary["byzantine_nodes"]) == 1
    run_dir = tmp_path / "ray-run"
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["final_test_accuracy"] == summary["final_test_accuracy"]
    assert saved["config"]["aggregator"] == "nnm+cwtm" and "excluded_replies" in saved
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 25 and {"round", "valid", "test-accuracy", "byzantine-replies"} <= set(rows[0])
    assert all(int(float(r["valid"])) == 6 for r in rows)
    # on_round ran in this process once per round, with the rows of metrics.csv
    assert [rnd for rnd, _ in seen] == list(range(1, 26))
    assert [rnd for rnd, row in seen if "test-accuracy" in row] == [5, 10, 15, 20, 25]
    assert [str(row["valid"]) for _, row in seen] == [r["valid"] for r in rows]
    assert seen[-1][1]["test-accuracy"] == summary["final_test_accuracy"]


@pytest.mark.slow
def test_a_failing_callback_stops_the_simulation_with_a_clear_error(tmp_path):
    import ray

    def broken(rnd: int, row: dict) -> None:
        raise ValueError(f"bad row {rnd}")

    cfg = {
        "dataset": "digits", "model": "mlp", "num-clients": 4, "num-byzantine": 1, "attack": "sf",
        "aggregator": "cwtm", "num-server-rounds": 50, "results-dir": str(tmp_path), "run-name": "x",
    }  # fmt: skip
    with pytest.raises(
        RoundCallbackError, match=r"callback .*broken raised ValueError: bad row 1 at round 1"
    ):
        simulate(cfg, on_round=broken)
    assert not (tmp_path / "x" / "summary.json").exists()
    assert not ray.is_initialized()  # the engine was shut down as after a normal run
