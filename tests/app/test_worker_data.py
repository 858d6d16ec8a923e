"""Who holds the data: ``data_assignment`` (split among all nodes or honest nodes only) and the partition a
worker trains on (the server's ``resam-data-partition`` over its node config)."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord
from torch import nn

import tests.flower_helpers  # noqa: F401 - sets the TaskIdentity that hand-made messages need
from resam_flower import protocol as P
from resam_flower.app.config import ExperimentConfig
from resam_flower.app.task import data_assignment, honest_partitions, prepare_partitions, round_generator
from resam_flower.app.worker import train
from resam_flower.data import load_partition
from resam_flower.models import build_model
from tests.flower_helpers import instruction

NODES = [907, 13, 2024, 55, 101]  # sorted: 13, 55, 101, 907, 2024


def test_all_nodes_ranked_by_id_hold_n_partitions():
    expected = {13: (0, 5), 55: (1, 5), 101: (2, 5), 907: (3, 5), 2024: (4, 5)}
    assert data_assignment(NODES, [55], "all") == expected


def test_honest_split_gives_n_minus_f_partitions_and_byzantine_nodes_copies():
    # honest 13, 101, 907 -> 0, 1, 2 of 3; Byzantine 55, 2024 (by id) -> copies of partitions 0 and 1
    got = data_assignment(NODES, [2024, 55], "honest")
    assert got == {13: (0, 3), 101: (1, 3), 907: (2, 3), 55: (0, 3), 2024: (1, 3)}
    # more Byzantine than honest nodes: partitions wrap around (j mod h)
    assert data_assignment([1, 2, 3, 4], [2, 3, 4], "honest") == {1: (0, 1), 2: (0, 1), 3: (0, 1), 4: (0, 1)}
    # no Byzantine node: the honest split is the split among all nodes
    assert data_assignment(NODES, [], "honest") == data_assignment(NODES, [], "all")


def test_honest_partitions_of_a_round():
    split = data_assignment(NODES, [2024, 55], "honest")
    assert honest_partitions(split, [907, 55, 13], [2024, 55]) == [0, 2]
    assert honest_partitions(split, NODES, [2024, 55]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((NODES, [55], "byzantine"), "data split must be 'all' or 'honest', got 'byzantine'"),
        ((NODES, [56], "honest"), r"byzantine_ids \[56\] are not in all_node_ids"),
        (([1, 1, 2], [], "all"), "duplicates"),
        (([1, 2], [1, 2], "honest"), "needs an honest node"),
        (([1, 2.0], [], "all"), "all_node_ids must be integers, got 2.0"),
        (([1, 2], [True], "all"), "byzantine_ids must be integers, got True"),
    ],
)
def test_bad_inputs_raise(args, match):
    with pytest.raises(ValueError, match=match):
        data_assignment(*args)


# -- the worker's partition ---------------------------------------------------------------------------------
BASE = {"dataset": "digits", "model": "mlp", "num-clients": 5, "num-byzantine": 1, "attack": "alie",
        "batch-size": 8, "seed": 4}  # fmt: skip


def setup(**kw):
    cfg = ExperimentConfig.from_run_config({**BASE, **kw})
    model = build_model("mlp", 10, (1, 8, 8), seed=0)
    return cfg, model, ArrayRecord(model.state_dict())


def reference_gradient(model: nn.Module, cfg: ExperimentConfig, pid: int, num: int, rnd: int) -> torch.Tensor:
    """Autograd gradient of the mean cross-entropy on the batch of partition ``pid`` of ``num`` this round."""
    data = load_partition("digits", pid, num, "iid", seed=cfg.seed)
    idx = torch.randperm(len(data), generator=round_generator(cfg.seed, pid, rnd))[: cfg.batch_size]
    loss = nn.functional.cross_entropy(model(data.images[idx]), data.labels[idx])
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def replied(msg, ctxt_config: dict) -> torch.Tensor:
    from flwr.app import Context, RecordDict

    ctxt = Context(run_id=1, node_id=7, node_config=ctxt_config, state=RecordDict(), run_config={})
    state = train(msg, ctxt).content["arrays"].to_torch_state_dict()
    return torch.cat([state[k].flatten() for k in state])


def test_the_server_assignment_wins_over_the_node_config():
    cfg, model, arrays = setup(**{"data-split": "honest"})
    config = {**cfg.to_config_record(), P.SERVER_ROUND: 3, P.DATA_PARTITION: 2, P.DATA_PARTITIONS: 4}
    got = replied(instruction(7, arrays, config), {"partition-id": 0, "num-partitions": 5})
    torch.testing.assert_close(got, reference_gradient(model, cfg, 2, 4, 3))


def test_without_an_assignment_the_node_config_holds():
    cfg, model, arrays = setup()
    config = {**cfg.to_config_record(), P.SERVER_ROUND: 2}
    got = replied(instruction(7, arrays, config), {"partition-id": 1, "num-partitions": 5})
    torch.testing.assert_close(got, reference_gradient(model, cfg, 1, 5, 2))


def test_a_node_without_partition_id_is_told_it_trains_on_partition_0(caplog):
    import logging

    from resam_flower.app import worker

    worker._said_no_partition.discard(7)
    cfg, model, arrays = setup()
    config = {**cfg.to_config_record(), P.SERVER_ROUND: 2}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        got = replied(instruction(7, arrays, config), {})
        replied(instruction(7, arrays, config), {})
        replied(instruction(7, arrays, config), {"partition-id": 1, "num-partitions": 5})
    torch.testing.assert_close(got, reference_gradient(model, cfg, 0, 5, 2))
    said = [r.getMessage() for r in caplog.records if "node config" in r.getMessage()]
    assert said == [  # once per node
        "node 7: no partition-id or num-partitions in its node config: it uses partition-id 0 of 5, as does "
        "every node started without one (the same data); start it with --node-config \"partition-id=K "
        "num-partitions=N\""
    ]


def test_an_honest_split_without_an_assignment_is_refused():
    cfg, _, arrays = setup(**{"data-split": "honest"})
    config = {**cfg.to_config_record(), P.SERVER_ROUND: 1}
    with pytest.raises(ValueError, match="'honest': the server must send each node resam-data-partition"):
        replied(instruction(7, arrays, config), {"partition-id": 0, "num-partitions": 5})


def test_the_split_is_prepared_with_n_minus_f_partitions(monkeypatch):
    seen = []
    monkeypatch.setattr("resam_flower.app.task.partition_indices", lambda *a, **k: seen.append(a[1]))
    prepare_partitions(ExperimentConfig.from_run_config({**BASE, "data-split": "honest"}))
    prepare_partitions(ExperimentConfig.from_run_config(BASE))
    assert seen == [4, 5]


def test_a_handler_leaves_the_thread_count_as_it_found_it():
    # one intra-op thread while the worker computes (virtual clients share the cores), then as before
    cfg, _, arrays = setup()
    config = {**cfg.to_config_record(), P.SERVER_ROUND: 1}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        replied(instruction(7, arrays, config), {"partition-id": 0, "num-partitions": 5})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
