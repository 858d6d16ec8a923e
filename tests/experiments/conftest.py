"""Fake sweep results and a fake simulate (no Ray): what the runner, report and plot tests build on."""

from __future__ import annotations

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
    """A made-up but deterministic accuracy: momentum helps, attacks hurt, krum is worse."""
    acc = 0.9 if cfg.momentum > 0 else 0.8
    acc -= {"alie": 0.2, "foe": 0.1}.get(cfg.attack if cfg.attacked else "none", 0.0)
    acc -= 0.05 if cfg.aggregator == "krum" else 0.0
    acc -= 0.01 * cfg.seed + 0.02 * cfg.num_byzantine
    return round(acc, 4)


def write_fake_run(config: dict) -> dict:
    """What simulate() leaves on disk, with :func:`fake_accuracy` as the final accuracy."""
    cfg = ExperimentConfig.from_run_config(config)
    acc = fake_accuracy(cfg)
    rows = []
    for rnd in range(1, cfg.num_server_rounds + 1):
        row = {"round": rnd, "valid": cfg.num_clients}
        if rnd % cfg.eval_every == 0 or rnd == cfg.num_server_rounds:
            row["test-accuracy"] = acc * rnd / cfg.num_server_rounds
        rows.append(row)
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


@pytest.fixture
def fake_simulate(monkeypatch):
    """Replace resam_flower.simulation.simulate by a recorder that writes fake results (no Ray)."""
    from resam_flower import simulation

    calls: list[dict] = []

    def simulate(config, *, backend=None, verbose=False, on_round=None):
        calls.append(dict(config))
        if config.get("seed") == 13:
            raise RuntimeError("simulated failure")
        for rnd in range(1, int(config.get("num-server-rounds", 1)) + 1):
            if on_round is not None:
                on_round(rnd, {"round": rnd})
        return write_fake_run(config)

    monkeypatch.setattr(simulation, "simulate", simulate)
    return calls
