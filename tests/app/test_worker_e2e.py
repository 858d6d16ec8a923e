"""The worker side of the honest data split, end to end on an in-process grid: a simulated server that splits
the data among honest nodes sends ``resam-data-partition(s)``, and every honest worker trains on its slice of
``n - f`` (the Byzantine node, omniscient, trains on nothing)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from flwr.app import ArrayRecord, ConfigRecord

import resam_flower.app.worker as worker
from resam_flower.app.config import ExperimentConfig
from resam_flower.app.task import data_assignment
from resam_flower.models import build_model
from resam_flower.strategies import ResilientAveraging, SimulatedAdversary
from tests.reliability.inline_grid import InlineGrid

CFG = {"dataset": "digits", "model": "mlp", "num-clients": 5, "num-byzantine": 1, "attack": "alie",
       "aggregator": "cwtm", "momentum": 0.9, "lr": 0.5, "batch-size": 16, "seed": 1,
       "data-split": "honest", "weight-decay-at": "worker", "worker-clip": 5.0}  # fmt: skip


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("flwr").setLevel(logging.ERROR)


def test_every_honest_worker_trains_on_its_slice_of_n_minus_f(monkeypatch):
    cfg = ExperimentConfig.from_run_config(CFG)
    seen: Counter = Counter()
    real = worker.partition_for

    def spy(c, pid, num):
        seen[(pid, num)] += 1
        return real(c, pid, num)

    monkeypatch.setattr(worker, "partition_for", spy)
    core = ResilientAveraging(
        "cwtm", num_byzantine=1, lr=0.5, weight_decay=cfg.server_weight_decay, fraction_evaluate=0.0,
        min_train_nodes=5, min_evaluate_nodes=0, min_available_nodes=5, seed=1,
    )  # fmt: skip
    strategy = SimulatedAdversary(core, "alie", 1, seed=1, honest_data=True)
    grid = InlineGrid(worker.make_client_app(), 5)
    initial = ArrayRecord(build_model("mlp", 10, (1, 8, 8), seed=1).state_dict())
    config = ConfigRecord(cfg.to_config_record())
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=2, train_config=config)
    # 4 honest workers, partitions 0..3 of 4, each trained once a round; nothing of 5 partitions
    assert seen == Counter({(p, 4): 2 for p in range(4)})
    byzantine = strategy.adversary.chosen
    expected = data_assignment(grid.ids, byzantine, "honest")
    assert sorted(v for k, v in expected.items() if k not in byzantine) == [(p, 4) for p in range(4)]
    assert core.round_log[-1]["valid"] == 5 and cfg.server_weight_decay == 0.0
