"""The in-process cell engine: Flower's Grid contract, reply metadata, isolation, bit-identity with Ray."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from resam_flower import __version__
from resam_flower import protocol as P
from resam_flower._provenance import code_version
from resam_flower.app.server_app import RoundCallbackError
from resam_flower.experiments.engine import (
    InProcessGrid,
    _new_run,
    _task_identity,
    simulate_in_process,
    simulation_node_ids,
)
from tests.flower_helpers import record

CONFIG = {
    "dataset": "digits",
    "model": "mlp",
    "num-clients": 6,
    "num-byzantine": 1,
    "attack": "alie",
    "attack-params": "z='karimireddy'",
    "aggregator": "nnm+cwtm",
    "momentum": 0.9,
    "lr": 0.5,
    "batch-size": 16,
    "num-server-rounds": 3,
    "eval-every": 1,
}


def echo_app(seen: list) -> ClientApp:
    """Replies with its arrays plus one, after scribbling on the message it received."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctxt: Context) -> Message:
        arrays = msg.content["arrays"]
        x = arrays["x"].numpy()
        seen.append((ctxt.node_id, dict(ctxt.node_config), msg.metadata.message_id))
        ctxt.state["calls"] = MetricRecord(
            {"n": int(ctxt.state.get("calls", MetricRecord({"n": 0}))["n"]) + 1}
        )
        if ctxt.node_config["partition-id"] == 1:
            raise RuntimeError("node one is broken")
        reply = ArrayRecord({"x": record(x=x + 1)["x"]})
        arrays["x"] = record(x=x * 0)["x"]  # a ClientApp scribbling on its input changes nothing outside
        return Message(
            RecordDict({"arrays": reply, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg
        )

    return app


def test_node_ids_are_flowers_seeded_ids():
    ids = simulation_node_ids(5, seed=3)
    assert len(set(ids)) == 5 and all(i not in (0, 1) for i in ids)  # 0 and 1 are Flower's reserved ids
    assert simulation_node_ids(5, seed=3) == ids and simulation_node_ids(5, seed=4) != ids
    assert simulation_node_ids(7, seed=3)[:5] == ids  # node i gets the i-th id of the seeded stream


def test_grid_delivers_with_flowers_metadata_contexts_and_error_replies():
    seen: list = []
    run = _new_run()
    with _task_identity(run.run_id):
        grid = InProcessGrid(echo_app(seen), 3, seed=0, run=run)
        ids = simulation_node_ids(3, seed=0)
        assert set(grid.get_node_ids()) == set(ids) and grid.run.run_id == run.run_id
        sent = record(x=np.arange(3.0))
        msgs = [
            Message(
                RecordDict({"arrays": sent, "config": ConfigRecord({})}),
                node,
                MessageType.TRAIN,
                group_id="7",
            )
            for node in ids
        ]
        replies = list(grid.send_and_receive(msgs, timeout=60.0))
        again = list(
            grid.send_and_receive([Message(RecordDict({"arrays": sent}), ids[0], MessageType.TRAIN)])
        )
    assert np.array_equal(sent["x"].numpy(), np.arange(3.0))  # the sender's arrays are untouched
    assert [
        (node, cfg["partition-id"], cfg["num-partitions"], cfg[P.SIMULATED_ROLES])
        for node, cfg, _ in seen[:3]
    ] == [(node, i, 3, True) for i, node in enumerate(ids)]
    assert [s[2] for s in seen[:3]] == [m.metadata.message_id for m in msgs] and all(s[2] for s in seen)
    by_src = {r.metadata.src_node_id: r for r in replies}
    assert set(by_src) == set(ids)
    for msg in msgs:
        reply = by_src[msg.metadata.dst_node_id]
        meta = reply.metadata
        assert (
            meta.reply_to_message_id == msg.metadata.message_id
            and meta.dst_node_id == msg.metadata.src_node_id
        )
        assert meta.message_type == MessageType.TRAIN and meta.group_id == "7" and meta.run_id == run.run_id
        assert meta.message_id and meta.message_id != msg.metadata.message_id
    assert np.array_equal(by_src[ids[0]].content["arrays"]["x"].numpy(), np.arange(3.0) + 1)
    broken = by_src[ids[1]]
    assert broken.has_error() and broken.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "node one is broken" in broken.error.reason
    # each node keeps its own Context across messages (momentum lives there)
    assert (
        int(grid.contexts[ids[0]].state["calls"]["n"]) == 2
        and int(grid.contexts[ids[2]].state["calls"]["n"]) == 1
    )
    assert again[0].content["arrays"]["x"].numpy().tolist() == [1.0, 2.0, 3.0]


def test_a_reply_later_than_the_timeout_is_dropped():
    seen: list = []
    run = _new_run()
    with _task_identity(run.run_id):
        grid = InProcessGrid(echo_app(seen), 1, seed=0, run=run)
        node = simulation_node_ids(1, seed=0)[0]
        msg = Message(RecordDict({"arrays": record(x=np.zeros(2))}), node, MessageType.TRAIN)
        assert list(grid.send_and_receive([msg], timeout=-1.0)) == [] and len(seen) == 1


def test_in_process_run_is_reproducible_and_writes_the_run(tmp_path):
    rounds = []
    a = simulate_in_process(
        {**CONFIG, "results-dir": str(tmp_path), "run-name": "a"}, on_round=lambda r, row: rounds.append(r)
    )
    b = simulate_in_process({**CONFIG, "results-dir": str(tmp_path), "run-name": "b"})
    assert rounds == [1, 2, 3] and a["rounds"] == 3 and a["skipped_rounds"] == 0
    assert a["final_model_sha256"] == b["final_model_sha256"]
    assert a["code"] == code_version() and a["code"].startswith(__version__)  # which code made the numbers
    assert a["byzantine_nodes"] and set(a["byzantine_nodes"]) <= set(simulation_node_ids(6, seed=0))
    assert (tmp_path / "a" / "summary.json").exists() and (tmp_path / "b" / "metrics.csv").exists()

    def boom(rnd, row):
        raise ValueError("stop")

    with pytest.raises(RoundCallbackError, match="stop"):
        simulate_in_process({**CONFIG, "results-dir": str(tmp_path), "run-name": "c"}, on_round=boom)


@pytest.mark.slow
def test_bit_identical_to_flowers_ray_simulation(tmp_path):
    from resam_flower.simulation import simulate

    for extra in ({}, {"aggregator": "cwtm", "momentum": 0.0, "fraction-train": 0.7, "seed": 2}):
        config = {**CONFIG, **extra, "results-dir": str(tmp_path)}
        ray = simulate({**config, "run-name": "ray"})
        local = simulate_in_process({**config, "run-name": "inprocess"})
        assert local["final_model_sha256"] == ray["final_model_sha256"], extra
        assert local["byzantine_nodes"] == ray["byzantine_nodes"] and local["rounds"] == ray["rounds"] == 3
        assert local["final_test_loss"] == ray["final_test_loss"]
