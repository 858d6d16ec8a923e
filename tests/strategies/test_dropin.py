"""The drop-in in someone else's Flower app: what a user hit, each as a regression test.

A plain Flower ClientApp (Flower's quickstart shape: trains locally, replies weights, reads ``config["lr"]``)
plus ``momentum_mod``, against ``ResilientAveraging`` on an in-process grid.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from resam_flower import protocol as P
from resam_flower.attacks import Adversary
from resam_flower.clients import byzantine_mod, momentum_mod
from resam_flower.strategies import NoProgressError, ResilientAveraging, SimulatedAdversary
from tests.flower_helpers import FakeGrid, instruction, record
from tests.flower_helpers import reply as make_reply
from tests.reliability.inline_grid import InlineGrid

THETA = record(w=np.array([1.0, 2.0], dtype=np.float32))


def quickstart_app(seen: list[dict], target=(0.0, 0.0), mods=()) -> ClientApp:
    """A user's FedAvg ClientApp: one SGD step towards ``target`` at the lr of *its own* config key."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, ctxt: Context) -> Message:
        config = msg.content["config"]
        seen.append(dict(config))
        w = msg.content["arrays"]["w"].numpy().astype(np.float32)
        w = w - float(config["lr"]) * (w - np.asarray(target, np.float32))  # gradient of 0.5 ||w - target||^2
        arrays = ArrayRecord({"w": ArrayRecord(torch_state_dict={"w": torch.tensor(w)})["w"]})
        return Message(
            RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg
        )

    return app


def test_the_users_train_config_reaches_the_clients_unchanged():
    seen: list[dict] = []
    grid = InlineGrid(quickstart_app(seen, mods=[momentum_mod(0.0)]), 3)
    strategy = ResilientAveraging(
        "mean", lr=1.0, min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0
    )
    strategy.start(grid, THETA, num_rounds=1, train_config=ConfigRecord({"lr": 0.01, "local-epochs": 3}))
    assert [c["lr"] for c in seen] == [0.01] * 3 and all(c["local-epochs"] == 3 for c in seen)
    assert seen[0][P.SERVER_LR] == pytest.approx(1.0)  # the server's rate travels under its own key


def test_momentum_of_a_weights_app_uses_the_users_lr_and_the_server_steps_the_gradient():
    # local step w' = w - 0.01 (w - 0) -> g = (w - w') / 0.01 = w exactly; beta = 0 and mean: theta - 0.5 * w
    seen: list[dict] = []
    grid = InlineGrid(quickstart_app(seen, mods=[momentum_mod(0.0)]), 3)
    strategy = ResilientAveraging(
        "mean", lr=0.5, min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0
    )
    result = strategy.start(grid, THETA, num_rounds=1, train_config=ConfigRecord({"lr": 0.01}))
    np.testing.assert_allclose(result.arrays["w"].numpy(), [0.5, 1.0], rtol=1e-4)


def test_weights_replies_in_gradient_mode_are_excluded_with_the_fix_and_the_run_fails(caplog):
    seen: list[dict] = []
    grid = InlineGrid(quickstart_app(seen), 3)  # the user forgot momentum_mod
    strategy = ResilientAveraging(
        "mean", lr=0.5, min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0
    )
    with caplog.at_level(logging.ERROR, logger="flwr"), pytest.raises(NoProgressError) as info:
        strategy.start(grid, THETA, num_rounds=2, train_config=ConfigRecord({"lr": 0.01}))
    assert strategy.excluded_total["kind"] == 6
    errors = [
        r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "excluded" in r.getMessage()
    ]
    assert len(errors) == 1 and "add momentum_mod" in errors[0]  # said once, with the fix
    np.testing.assert_array_equal(info.value.result.arrays["w"].numpy(), [1.0, 2.0])  # the model, not empty


def test_model_mode_takes_weights_and_the_mod_steps_aside():
    seen: list[dict] = []
    grid = InlineGrid(quickstart_app(seen, mods=[momentum_mod(0.9)]), 3)
    strategy = ResilientAveraging(
        "mean", mode="model", min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0
    )
    result = strategy.start(grid, THETA, num_rounds=1, train_config=ConfigRecord({"lr": 0.1}))
    # FedAvg of the three identical local models: w - 0.1 w (server lr 1.0 applies the mean update)
    np.testing.assert_allclose(result.arrays["w"].numpy(), [0.9, 1.8], rtol=1e-6)
    assert seen[0][P.MODE] == "model"


def test_momentum_replies_in_model_mode_are_excluded():
    s = ResilientAveraging("mean", mode="model", min_train_nodes=1, min_available_nodes=1)
    msgs = list(s.configure_train(1, THETA, ConfigRecord(), FakeGrid([1])))
    out, m = s.aggregate_train(1, [make_reply(msgs[0], THETA, {P.REPLY_MOMENTUM: 1})])
    assert out is None and m["excluded-kind"] == 1


def test_too_few_nodes_for_the_rule_fail_before_round_one_with_the_numbers():
    grid = InlineGrid(quickstart_app([], mods=[momentum_mod(0.9)]), 5)
    strategy = ResilientAveraging("cwtm", num_byzantine=3, min_train_nodes=2, node_stall_timeout=0.2)
    with pytest.raises(
        RuntimeError, match=r"only 5 nodes connected, 7 needed \(cwtm with num_byzantine=3 needs 7"
    ):
        strategy.start(grid, THETA, num_rounds=3)
    sampled = ResilientAveraging("cwtm", num_byzantine=1, fraction_train=0.5, min_train_nodes=1)
    with pytest.raises(ValueError, match=r"at least 3 replies a round, but only 2 of the 5 connected nodes"):
        sampled.start(grid, THETA, num_rounds=3)


def test_the_round_deadline_is_the_strategys_and_a_silent_node_is_missing():
    grid = InlineGrid(quickstart_app([], mods=[momentum_mod(0.0)]), 4, fail=lambda rnd, node: node == 1003)
    strategy = ResilientAveraging(
        "mean", round_timeout=7.0, min_train_nodes=4, min_available_nodes=4, fraction_evaluate=0
    )
    strategy.start(grid, THETA, num_rounds=2, train_config=ConfigRecord({"lr": 0.01}))
    assert grid.timeouts[:2] == [7.0, 7.0]
    assert [e["missing"] for e in strategy.round_log] == [1, 1] and strategy.round_log[-1]["valid"] == 3


def test_summary_says_what_is_true(caplog):
    with caplog.at_level(logging.INFO, logger="flwr"):
        ResilientAveraging("nnm+cwtm", num_byzantine=1).summary()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "num-examples" in text and "Weighted by: 'num-examples'" not in text
    assert "never used" in text


def test_simulated_adversary_accepts_an_adversary_and_validates_at_build_time():
    core = ResilientAveraging("cwtm", num_byzantine=1, min_train_nodes=3, min_available_nodes=3)
    wrapped = SimulatedAdversary(core, Adversary("sf", 1, seed=0))
    msgs = list(wrapped.configure_train(1, THETA, ConfigRecord(), FakeGrid([1, 2, 3])))
    assert sum(m.content["config"].get(P.ROLE) == "omniscient" for m in msgs) == 1
    with pytest.raises(TypeError, match="wraps a Flower Strategy"):
        SimulatedAdversary(Adversary("sf", 1), "sf", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_byzantine is required"):
        SimulatedAdversary(core, "alie")


def _byzantine_node_run(node_config: dict) -> np.ndarray:
    """What a node with ``byzantine_mod`` replies when the server sends it the role ``sf``."""
    app = ClientApp(mods=[byzantine_mod, momentum_mod(0.0)])

    @app.train()
    def train(msg, ctxt):
        return make_reply(msg, record(w=np.array([3.0, 4.0], np.float32)), {P.REPLY_GRADIENT: 1})

    ctxt = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})
    msg = instruction(5, THETA, {P.ROLE: "sf", P.SERVER_ROUND: 1})
    return app(msg, ctxt).content["arrays"]["w"].numpy()


def test_a_deployed_node_ignores_a_server_sent_byzantine_role():
    np.testing.assert_array_equal(_byzantine_node_run({"partition-id": 0}), [3.0, 4.0])
    np.testing.assert_array_equal(_byzantine_node_run({P.SIMULATED_ROLES: True}), [-3.0, -4.0])
    np.testing.assert_array_equal(_byzantine_node_run({P.NODE_ROLE: "sf"}), [-3.0, -4.0])  # its own config


def test_the_simulated_adversary_acts_and_the_spread_metrics_are_right():
    # 4 honest momentums and one Byzantine node; sign flipping forges -mean(honest) for it
    honest = {1: [1.0, 0.0], 2: [3.0, 0.0], 3: [1.0, 2.0], 4: [3.0, 2.0]}
    core = ResilientAveraging("mean", lr=1.0, min_train_nodes=5, min_available_nodes=5)
    wrapped = SimulatedAdversary(core, Adversary("sf", 1, seed=0))
    msgs = {
        m.metadata.dst_node_id: m
        for m in wrapped.configure_train(1, THETA, ConfigRecord(), FakeGrid([1, 2, 3, 4, 5]))
    }
    byz = wrapped.chosen[0]
    vectors = dict(zip([n for n in sorted(msgs) if n != byz], honest.values(), strict=True))
    replies = [
        make_reply(msgs[n], record(w=np.asarray(v, np.float32)), {P.REPLY_MOMENTUM: 1})
        for n, v in vectors.items()
    ]
    replies.append(make_reply(msgs[byz], THETA, {"num-examples": 1}))  # what an omniscient node answers
    out, m = wrapped.aggregate_train(1, replies)
    mean = np.array([2.0, 1.0])
    agg = (4 * mean - mean) / 5  # the forged row -mean replaced the Byzantine reply
    np.testing.assert_allclose(out["w"].numpy(), [1.0, 2.0] - agg, rtol=1e-6)
    assert m["attack-shift-norm"] == pytest.approx(2 * np.linalg.norm(mean))
    assert m["honest-spread-max"] == pytest.approx(np.sqrt(8))
    pair = [np.linalg.norm(np.subtract(a, b)) for a in honest.values() for b in honest.values() if a != b]
    assert m["honest-spread-mean"] == pytest.approx(np.mean(pair))
    assert m["honest-mean-norm"] == pytest.approx(np.linalg.norm(mean))
    assert m["aggregation-error"] == pytest.approx(np.linalg.norm(agg - mean), rel=1e-6)
    assert m["kappa-empirical"] == pytest.approx(np.linalg.norm(agg - mean) / np.sqrt(8), rel=1e-6)
    assert core.round_log[-1]["aggregation-error"] == m["aggregation-error"]  # in metrics.csv too


def test_start_takes_flowers_arguments_positionally_too():
    seen: list[dict] = []
    grid = InlineGrid(quickstart_app(seen, mods=[momentum_mod(0.0)]), 3)
    strategy = ResilientAveraging(
        "mean", lr=0.5, min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0
    )
    # Flower's order: grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn
    result = strategy.start(grid, THETA, 1, 5.0, ConfigRecord({"lr": 0.01}))
    assert grid.timeouts[0] == 5.0 and seen[0]["lr"] == 0.01
    np.testing.assert_allclose(result.arrays["w"].numpy(), [0.5, 1.0], rtol=1e-4)
