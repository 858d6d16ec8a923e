"""Fake sweep results and a fake simulate (no Ray): what the runner, report and plot tests build on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resam_flower.app.config import ExperimentConfig
from resam_flower.app.results import write_run

BASE = {
    "dataset": "digits",
    "model": "mlp",
    "num-clients": 7,
    "num-byzantine": 2,
    "num-server-rounds": 4,
    "eval-every": 2,
}


def fake_accuracy(cfg: ExperimentConfig) -> float:
    """A made-up but deterministic accuracy: momentum helps, attacks hurt, krum is worse, and so are more
    Byzantine workers and (Dirichlet partitions only) heterogeneous data (α < 2)."""
    acc = 0.9 if cfg.momentum > 0 else 0.8
    acc -= {"alie": 0.2, "foe": 0.1}.get(cfg.attack if cfg.attacked else "none", 0.0)
    acc -= 0.05 if cfg.aggregator == "krum" else 0.0
    acc -= 0.01 * cfg.seed + 0.02 * cfg.num_byzantine
    acc -= 0.03 if cfg.partitioner == "dirichlet" and cfg.alpha < 2 else 0.0
    return round(acc, 4)


def fake_rows(cfg: ExperimentConfig, acc: float) -> list[dict]:
    """The metrics.csv rows of a fake run: accuracy rising linearly to ``acc``."""
    rows = []
    for rnd in range(1, cfg.num_server_rounds + 1):
        row = {"round": rnd, "valid": cfg.num_clients}
        if rnd % cfg.eval_every == 0 or rnd == cfg.num_server_rounds:
            row["test-accuracy"] = acc * rnd / cfg.num_server_rounds
        rows.append(row)
    return rows


def write_fake_run(config: dict) -> dict:
    """What simulate() leaves on disk, with :func:`fake_accuracy` as the final accuracy."""
    cfg = ExperimentConfig.from_run_config(config)
    acc = fake_accuracy(cfg)
    rows = fake_rows(cfg, acc)
    summary = {
        "final_test_accuracy": acc,
        "initial_test_accuracy": 0.1,
        "rounds": cfg.num_server_rounds,
        "wall_time_s": 0.0,
        "excluded_replies": 0,
        "config": cfg.to_dict(),
    }
    write_run(Path(cfg.results_dir) / cfg.name(), cfg.to_dict(), rows, summary)
    return summary


class Calls(list):
    """The configs simulate() was called with; ``rounds``: the (cell, round) pairs passed to on_round."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[tuple[str, int]] = []


@pytest.fixture
def fake_simulate(monkeypatch):
    """Replace resam_flower.simulation.simulate by a recorder that writes fake results (no Ray)."""
    from resam_flower import simulation

    calls = Calls()

    def simulate(config, *, backend=None, verbose=False, on_round=None):
        calls.append(dict(config))
        if config.get("seed") == 13:
            raise RuntimeError("simulated failure")
        summary = write_fake_run(config)
        if on_round is not None:  # the rows simulate() would pass: those of metrics.csv
            cfg = ExperimentConfig.from_run_config(config)
            for row in fake_rows(cfg, summary["final_test_accuracy"]):
                on_round(row["round"], row)
                calls.rounds.append((cfg.name(), row["round"]))
        return summary

    monkeypatch.setattr(simulation, "simulate", simulate)
    return calls


@pytest.fixture
def results(tmp_path, fake_simulate):
    """A fake sweep (no Ray): cwtm and krum x alie and foe x beta {0, 0.9} x seeds {0, 1}, plus no attack."""
    from resam_flower.experiments import Sweep, run_sweep

    sweep = Sweep(
        "fake",
        BASE,
        {"aggregator": ["cwtm", "krum"], "attack": ["alie", "foe"], "momentum": [0.0, 0.9], "seed": [0, 1]},
        include=[{"attack": "none", "aggregator": ["cwtm", "krum"], "momentum": [0.0, 0.9]}],
    )
    run_sweep(sweep, tmp_path, progress=False, share_ray=False)
    return tmp_path / "fake"


def write_sweep_file(path, name: str, base: dict, grid: str, engine: str = "") -> None:
    """A sweep TOML at ``path``: ``[sweep]`` (``name``, ``engine`` if given), ``[base]`` from ``base`` and the
    ``[grid]`` lines ``grid`` as written (``'aggregator = ["cwtm"]\\n'``)."""
    sweep = f'[sweep]\nname = "{name}"\n' + (f'engine = "{engine}"\n' if engine else "")
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())
    path.write_text(f"{sweep}[base]\n{body}[grid]\n{grid}")
