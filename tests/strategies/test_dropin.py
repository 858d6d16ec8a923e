"""The drop-in in someone else's Flower app: what a user hit, each as a regression test.

A plain Flower ClientApp (Flower's quickstart shape: trains locally, replies weights, reads ``config["lr"]``)
plus ``momentum_mod``, against ``ResilientAveraging`` on an in-process grid.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
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
    assert out is None and m["resam-excluded-kind"] == 1


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


def test_a_round_skipped_for_lack_of_replies_says_when_nodes_missed_the_deadline():
    grid = InlineGrid(quickstart_app([], mods=[momentum_mod(0.0)]), 3, fail=lambda rnd, node: node == 1002)
    strategy = ResilientAveraging("cwtm", num_byzantine=1, round_timeout=7.0, min_train_nodes=3,
                                  min_available_nodes=3, fraction_evaluate=0, fail_if_no_progress=False)
    strategy.start(grid, THETA, num_rounds=1, train_config=ConfigRecord({"lr": 0.01}))
    reason = strategy.round_log[0]["skipped"]
    assert reason.startswith("2 valid replies, cwtm needs n > 2f (>= 3, f=1); 1 sampled node(s) sent no")
    assert "round_timeout=7 s" in reason


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
    assert m["resam-attack-shift-norm"] == pytest.approx(2 * np.linalg.norm(mean))
    assert m["resam-honest-spread-max"] == pytest.approx(np.sqrt(8))
    pair = [np.linalg.norm(np.subtract(a, b)) for a in honest.values() for b in honest.values() if a != b]
    assert m["resam-honest-spread-mean"] == pytest.approx(np.mean(pair))
    assert m["resam-honest-mean-norm"] == pytest.approx(np.linalg.norm(mean))
    assert m["resam-aggregation-error"] == pytest.approx(np.linalg.norm(agg - mean), rel=1e-6)
    assert m["resam-kappa-empirical"] == pytest.approx(np.linalg.norm(agg - mean) / np.sqrt(8), rel=1e-6)
    assert core.round_log[-1]["aggregation-error"] == m["resam-aggregation-error"]  # in metrics.csv too


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


def fedavg_app(seen: list[tuple[str, int]], per_class: list[float]) -> ClientApp:
    """A FedAvg app that reads Flower's ``server-round`` and reports a scalar and a list metric."""
    app = ClientApp(mods=[momentum_mod(0.0)])

    @app.train()
    def train(msg: Message, ctxt: Context) -> Message:
        seen.append(("train", int(msg.content["config"]["server-round"])))
        w = msg.content["arrays"]["w"].numpy().astype(np.float32)
        arrays = ArrayRecord({"w": ArrayRecord(torch_state_dict={"w": torch.tensor(0.5 * w)})["w"]})
        node = int(ctxt.node_config["partition-id"])
        metrics = MetricRecord({"train_loss": float(node), "num-examples": 10})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, ctxt: Context) -> Message:
        seen.append(("evaluate", int(msg.content["config"]["server-round"])))
        node = int(ctxt.node_config["partition-id"])
        metrics = {"eval_acc": 0.5 + 0.1 * node, "acc-per-class": [v + node for v in per_class]}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def test_a_fedavg_app_reads_server_round_and_gets_its_metrics_under_their_own_names():
    seen: list[tuple[str, int]] = []
    grid = InlineGrid(fedavg_app(seen, [0.25, 0.5]), 3)
    strategy = ResilientAveraging("cwmed", num_byzantine=1, lr=0.1, min_train_nodes=3, min_available_nodes=3,
                                  min_evaluate_nodes=3)
    result = strategy.start(grid, THETA, num_rounds=2, train_config=ConfigRecord({"lr": 0.01}))
    expected = [(kind, r) for r in (1, 2) for kind in ("train", "evaluate") for _ in range(3)]
    assert sorted(seen) == sorted(expected)
    for rnd in (1, 2):
        train = result.train_metrics_clientapp[rnd]
        assert train["train_loss"] == 1.0  # median of 0, 1, 2 under the client's own name, as FedAvg
        assert train["resam-valid"] == 3 and train["resam-f"] == 1 and train["resam-skipped"] == 0
        evaluate = result.evaluate_metrics_clientapp[rnd]
        assert evaluate["eval_acc"] == pytest.approx(0.6)
        assert evaluate["acc-per-class"] == pytest.approx([1.25, 1.5])  # element-wise median of three lists


def test_the_users_own_server_round_is_never_overwritten():
    s = ResilientAveraging("mean", min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    for configure in (s.configure_train, s.configure_evaluate):
        msgs = list(configure(3, THETA, ConfigRecord({"server-round": 41}), FakeGrid([1])))
        config = msgs[0].content["config"]
        assert config["server-round"] == 41 and config[P.SERVER_ROUND] == 3
        msgs = list(configure(3, THETA, ConfigRecord(), FakeGrid([1])))
        assert msgs[0].content["config"]["server-round"] == 3


@pytest.mark.parametrize("bad", ["nan", "float64"])
def test_in_model_mode_an_honest_nodes_nan_or_float64_does_not_lower_f(bad):
    # cwtm, f = 1, three nodes: one honest node's training diverged (or it converted its weights), one is
    # honest, one Byzantine. Lowering f to 0 would hand the mean to the Byzantine reply: the round is skipped.
    replies = {1: np.array([np.nan, 1.0], np.float32) if bad == "nan" else np.array([1.0, 2.0], np.float64),
               2: np.array([1.1, 2.1], np.float32), 3: np.array([1e6, -1e6], np.float32)}
    for mode, f in (("model", 1), ("gradient", 0)):
        s = ResilientAveraging("cwtm", num_byzantine=1, mode=mode, min_train_nodes=3, min_available_nodes=3)
        sent = s.configure_train(1, THETA, ConfigRecord(), FakeGrid([1, 2, 3]))
        msgs = {m.metadata.dst_node_id: m for m in sent}
        flag = {P.REPLY_MOMENTUM: 1} if mode == "gradient" else {}
        out, m = s.aggregate_train(1, [make_reply(msgs[n], record(w=v), flag) for n, v in replies.items()])
        assert m["resam-f"] == f and m["resam-valid"] == 2, mode
        # model mode keeps f = 1 (cwtm needs 3 replies: skipped); gradient mode, where momentum_mod turns an
        # honest NaN into an error reply, takes it as proof and runs f = 0 on the other two
        assert (out is None) == (mode == "model")


def test_failed_evaluations_are_logged_with_their_reasons_and_too_few_reporters_give_no_median(caplog):
    s = ResilientAveraging("mean", num_byzantine=1, min_evaluate_nodes=3, min_available_nodes=3)
    msgs = list(s.configure_evaluate(1, THETA, ConfigRecord(), FakeGrid([1, 2, 3])))
    error = Message(Error(code=0, reason="KeyError: 'server-round'"), reply_to=msgs[0])
    replies = [error, make_reply(msgs[1], None, {"eval_acc": 0.9})]
    replies.append(make_reply(msgs[2], None, {"eval_acc": -5.0}))
    with caplog.at_level(logging.INFO, logger="flwr"):
        assert s.aggregate_evaluate(1, replies) is None  # two reporters, f = 1: a median of two is the liar's
        s.aggregate_evaluate(2, replies)
    text = [r.getMessage() for r in caplog.records]
    assert "aggregate_evaluate: received 2 results and 1 failures" in text
    assert any("evaluate error from node" in t and "KeyError: 'server-round'" in t for t in text)
    left_out = [t for t in text if "eval_acc left out" in t]
    assert len(left_out) == 1 and "reported by 2 replies, fewer than 2f + 1 = 3" in left_out[0]  # said once
    with caplog.at_level(logging.WARNING, logger="flwr"):
        s.aggregate_evaluate(3, [error])
    assert any("every evaluate reply failed" in r.getMessage() for r in caplog.records)


def test_list_metrics_are_element_wise_medians_of_the_most_reported_length():
    from resam_flower.strategies.robust_metrics import median_metrics

    rng = np.random.default_rng(0)
    honest = rng.normal(size=(5, 3)).tolist()
    lies = [[1e9, -1e9, 1e9], [5.0, 5.0]]  # f = 2 liars, one with another length
    msgs = list(ResilientAveraging("mean").configure_evaluate(1, THETA, ConfigRecord(), FakeGrid(range(7))))
    replies = [make_reply(m, None, {"cm": v}) for m, v in zip(msgs, honest + lies, strict=True)]
    out = median_metrics(replies, f=2)
    assert out["cm"] == pytest.approx(np.median(np.array(honest + lies[:1]), axis=0).tolist())
    assert all(min(col) <= v <= max(col) for v, col in zip(out["cm"], np.array(honest).T, strict=True))
    dropped: dict[str, str] = {}
    assert median_metrics(replies[:4], f=2, dropped=dropped) == {}  # 4 lists of length 3 < 2f + 1 = 5
    assert "reported by 4 replies (as lists of one length)" in dropped["cm"]


def test_fedavgs_metric_hooks_are_honoured_and_its_other_arguments_explained():
    calls = []

    def count(contents, weighting_key):
        calls.append(weighting_key)
        return MetricRecord({"replies": len(contents)})

    s = ResilientAveraging("mean", lr=1.0, min_train_nodes=3, min_available_nodes=3,
                           train_metrics_aggr_fn=count, evaluate_metrics_aggr_fn=count)
    msgs = list(s.configure_train(1, THETA, ConfigRecord(), FakeGrid([1, 2, 3])))
    ok = [make_reply(m, THETA, {P.REPLY_MOMENTUM: 1}) for m in msgs[:2]]
    _, m = s.aggregate_train(1, [*ok, make_reply(msgs[2], record(w=np.zeros(3, np.float32)), {})])
    assert m["replies"] == 2 and m["resam-valid"] == 2  # the hook sees the valid replies only
    evals = list(s.configure_evaluate(1, THETA, ConfigRecord(), FakeGrid([1, 2, 3])))
    assert s.aggregate_evaluate(1, [make_reply(e, None, {"a": 1.0}) for e in evals])["replies"] == 3
    assert calls == ["num-examples", "num-examples"]
    broken = ResilientAveraging("mean", lr=1.0, min_train_nodes=2, min_available_nodes=2,
                                train_metrics_aggr_fn=lambda contents, key: 1 / 0)
    msgs = list(broken.configure_train(1, THETA, ConfigRecord(), FakeGrid([1, 2])))
    out, m = broken.aggregate_train(1, [make_reply(x, THETA, {P.REPLY_MOMENTUM: 1}) for x in msgs])
    assert out is not None and m["resam-skipped"] == 0  # the user's bug costs the metrics, not the round
    with pytest.raises(TypeError, match="got 0.5: FedAvg's first argument is fraction_train, pass it by"):
        ResilientAveraging(0.5)
    with pytest.raises(TypeError, match="weighted_by_key='num-examples': RESAM weighs every reply equally"):
        ResilientAveraging("cwtm", weighted_by_key="num-examples")


class LosingGrid(InlineGrid):
    """Nodes whose last one drops out of the federation for round 2 (train and evaluate), then returns."""

    def get_node_ids(self) -> list[int]:
        return self.ids[:-1] if self.calls in (2, 3) else list(self.ids)


def test_a_node_lost_mid_run_skips_the_round_it_is_needed_for_and_the_run_goes_on(caplog):
    # cwtm with f = 1 needs 3 replies: round 2 has 2 nodes, is skipped saying why; rounds 1 and 3 aggregate.
    # Before round 1 the same shortfall is a setup mistake and fails (test_too_few_nodes_... above).
    grid = LosingGrid(fedavg_app([], [0.0]), 3)
    strategy = ResilientAveraging("cwtm", num_byzantine=1, lr=0.1, min_train_nodes=3, min_evaluate_nodes=3,
                                  min_available_nodes=3, node_stall_timeout=0.05)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result = strategy.start(grid, THETA, num_rounds=3, train_config=ConfigRecord({"lr": 0.5}))
    assert ["skipped" in e for e in strategy.round_log] == [False, True, False]
    assert strategy.round_log[1]["valid"] == 2 and "needs n > 2f" in strategy.round_log[1]["skipped"]
    lines = [r.getMessage() for r in caplog.records]
    shortfalls = [m for m in lines if "only 2 nodes connected, 3 wanted" in m]
    assert len(shortfalls) == 2 and all("the round goes on with them" in m for m in shortfalls)  # train, eval
    assert sorted(result.evaluate_metrics_clientapp) == [1, 3]  # 2 evaluate replies < 2f + 1: no median
    # each aggregated round: local w' = w / 2 at lr 0.5, so the gradient is w and the server steps w -= 0.1 w
    np.testing.assert_allclose(result.arrays["w"].numpy(), THETA["w"].numpy() * 0.9**2, rtol=1e-5)


def test_left_out_metrics_name_only_keys_an_honest_node_sent_and_protocol_keys_are_not_metrics(caplog):
    from resam_flower.strategies.robust_metrics import _number, median_metrics

    s = ResilientAveraging("mean", num_byzantine=1, lr=1.0, min_train_nodes=4, min_available_nodes=4)
    msgs = list(s.configure_train(1, THETA, ConfigRecord(), FakeGrid([1, 2, 3, 4])))
    junk = {f" junk-{i}": 1.0 for i in range(1000)}  # one Byzantine node invents 1,000 keys
    metrics = [{"loss": 1.0, "acc": 0.5}, {"loss": 2.0, "acc": 0.7}, {"loss": 3.0}, {"loss": 1e9, **junk}]
    replies = [make_reply(m, THETA, {P.REPLY_MOMENTUM: 1, P.MOMENTUM_NORM: 3.0, "num-examples": 10, **x})
               for m, x in zip(msgs, metrics, strict=True)]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, m = s.aggregate_train(1, replies)
    assert {k for k in m if not k.startswith(P.PREFIX)} == {"loss"} and m["loss"] == 2.5
    assert P.MOMENTUM_NORM not in m  # resam-* keys are the server's figures, never a client's
    notes = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert notes == ["train client metric acc left out: reported by 2 replies, fewer than 2f + 1 = 3: a "
                     "median of so few is not robust (said once)"]  # the junk keys (1 reporter <= f): unnamed
    # lists of another length: said when more than f replies sent them; medians never overflow
    evals = list(s.configure_evaluate(1, THETA, ConfigRecord(), FakeGrid(range(5))))
    lists = [[1.0, 2.0]] * 3 + [[1.0]] * 2
    dropped: dict[str, str] = {}
    out = median_metrics([make_reply(e, None, {"cm": v}) for e, v in zip(evals, lists, strict=True)], f=1,
                         dropped=dropped)
    assert out == {"cm": [1.0, 2.0]} and dropped["cm"].startswith("2 of its 5 replies left out")
    big = [make_reply(e, None, {"x": 1.7e308}) for e in evals[:4]]
    assert median_metrics(big) == {"x": 1.7e308} and _number(10**400) is None


def test_an_evaluation_sample_too_small_for_robust_metrics_is_said_once(caplog):
    s = ResilientAveraging("mean", num_byzantine=1, min_evaluate_nodes=2, fraction_evaluate=0.5,
                           min_available_nodes=4)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        for rnd in (1, 2):
            assert len(list(s.configure_evaluate(rnd, THETA, ConfigRecord(), FakeGrid([1, 2, 3, 4])))) == 2
    lines = [r.getMessage() for r in caplog.records]
    said = [m for m in lines if "2 nodes sampled, but client evaluation" in m]
    assert len(said) == 1 and "need 2f + 1 = 3 replies" in said[0]


def test_the_buffer_list_is_always_sent_and_a_local_lr_other_than_the_servers_is_said_once(caplog):
    # buffers=[]: the mod must not fall back to BatchNorm names the server steps as parameters
    s = ResilientAveraging("mean", buffers=[], min_train_nodes=1, min_available_nodes=1)
    bn = record(w=np.zeros(2, np.float32), **{"bn.running_var": np.ones(1, np.float32)})
    sent = next(iter(s.configure_train(1, bn, ConfigRecord(), FakeGrid([1]))))
    assert sent.content["config"][P.BUFFERS] == []

    def said(server_lr: float) -> list[str]:
        caplog.clear()
        grid = InlineGrid(quickstart_app([], mods=[momentum_mod(0.0)]), 3)
        strategy = ResilientAveraging("mean", lr=server_lr, min_train_nodes=3, min_available_nodes=3,
                                      fraction_evaluate=0)
        with caplog.at_level(logging.WARNING, logger="flwr"):
            strategy.start(grid, THETA, num_rounds=2, train_config=ConfigRecord({"lr": 0.01}))
        return [r.getMessage() for r in caplog.records if "their local lr" in r.getMessage()]

    warned = said(0.5)
    assert len(warned) == 1 and "a round moves 50 times as far as FedAvg's (pass lr=0.01" in warned[0]
    assert said(0.01) == []
