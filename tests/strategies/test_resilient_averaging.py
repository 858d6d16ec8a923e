"""ResilientAveraging on hand-made replies: aggregation, server step (both modes), screening."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from resam_flower import protocol as P
from resam_flower.strategies import ResilientAveraging, SimulatedAdversary
from tests.flower_helpers import FakeGrid, instruction, record
from tests.flower_helpers import reply as _reply

MOMENTUM = {P.REPLY_MOMENTUM: 1}


def reply(to, arrays, metrics=None):
    """A gradient-mode reply (flagged as a momentum, as momentum_mod sends it)."""
    return _reply(to, arrays, {**MOMENTUM, **(metrics or {})})

THETA = record(w=np.array([1.0, 2.0], dtype=np.float32), n=np.array(7, dtype=np.int64))


def start_round(strategy, nodes, arrays=THETA, rnd=1):
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), FakeGrid(nodes)))
    return {m.metadata.dst_node_id: m for m in msgs}


def grad_replies(msgs, grads, kind=MOMENTUM):
    return [
        _reply(msgs[n], record(w=np.asarray(g, np.float32), n=np.array(7, np.int64)), dict(kind))
        for n, g in grads.items()
    ]


def w(rec):
    return rec["w"].numpy()


def test_gradient_mode_step_with_cwmed():
    s = ResilientAveraging("cwmed", num_byzantine=1, lr=0.5, min_train_nodes=3)
    msgs = start_round(s, [1, 2, 3])
    out, metrics = s.aggregate_train(1, grad_replies(msgs, {1: [1, 1], 2: [2, 4], 3: [100, -100]}))
    # median per coordinate: [2, 1]; theta - 0.5 * [2, 1]
    np.testing.assert_allclose(w(out), [0.0, 1.5])
    assert int(out["n"].numpy()) == 7  # non-float arrays carried over
    assert metrics["resam-valid"] == 3 and metrics["resam-excluded"] == 0 and metrics["resam-skipped"] == 0


def test_weight_decay_and_lr_schedule():
    s = ResilientAveraging(
        "mean",
        lr=1.0,
        lr_schedule="step",
        lr_schedule_params={"step_size": 1, "gamma": 0.5},
        weight_decay=0.1,
        min_train_nodes=1,
        min_available_nodes=1,
    )
    msgs = start_round(s, [1], rnd=2)
    out, m = s.aggregate_train(2, grad_replies(msgs, {1: [0, 0]}))
    # lr at round 2 = 0.5; step = 0 + 0.1 * theta
    np.testing.assert_allclose(w(out), np.array([1.0, 2.0]) * (1 - 0.05), rtol=1e-6)
    assert m["resam-lr"] == pytest.approx(0.5)


def test_model_mode_aggregates_updates():
    s = ResilientAveraging("cwtm", num_byzantine=1, mode="model", min_train_nodes=3)
    msgs = start_round(s, [1, 2, 3])
    # replies are models; updates: [1,1], [3,3], [1e6,-1e6] -> trimmed mean drops extremes -> per coord middle
    weights = {1: [2, 3], 2: [4, 5], 3: [1e6 + 1, -1e6 + 2]}
    out, _ = s.aggregate_train(1, grad_replies(msgs, weights, kind={"num-examples": 5}))
    np.testing.assert_allclose(w(out), [1 + 3, 2 + 1])


def test_max_update_norm_clips_the_aggregate():
    s = ResilientAveraging("mean", lr=1.0, max_update_norm=1.0, min_train_nodes=1, min_available_nodes=1)
    msgs = start_round(s, [1])
    out, m = s.aggregate_train(1, grad_replies(msgs, {1: [3, 4]}))
    np.testing.assert_allclose(w(out), [1 - 0.6, 2 - 0.8], rtol=1e-6)
    assert m["resam-aggregate-norm"] == pytest.approx(5.0)


def bad_replies(msgs):
    """One reply per kind of invalid input, from nodes 2..9; node 1 is honest."""
    good = reply(msgs[1], record(w=np.array([1, 1], np.float32), n=np.array(7, np.int64)))
    nan = reply(msgs[2], record(w=np.array([np.nan, 1], np.float32), n=np.array(7, np.int64)))
    shape = reply(msgs[3], record(w=np.array([1, 1, 1], np.float32), n=np.array(7, np.int64)))
    dtype = reply(msgs[4], record(w=np.array([1, 1], np.float64), n=np.array(7, np.int64)))
    missing = reply(msgs[5], record(w=np.array([1, 1], np.float32)))
    extra = reply(msgs[6], record(w=np.array([1, 1], np.float32), n=np.array(7, np.int64), x=np.zeros(1)))
    empty = reply(msgs[7], None)
    two = Message(
        content=RecordDict({"a": THETA, "b": THETA, "m": MetricRecord(MOMENTUM)}), reply_to=msgs[8]
    )
    inf = reply(msgs[9], record(w=np.array([np.inf, 1], np.float32), n=np.array(7, np.int64)))
    dup = reply(msgs[1], record(w=np.array([5, 5], np.float32), n=np.array(7, np.int64)))
    return [good, nan, shape, dtype, missing, extra, empty, two, inf, dup]


def test_every_kind_of_invalid_reply_is_excluded_with_its_reason():
    s = ResilientAveraging("mean", lr=1.0, min_train_nodes=9)
    msgs = start_round(s, list(range(1, 10)))
    out, m = s.aggregate_train(1, bad_replies(msgs))
    np.testing.assert_allclose(w(out), [0.0, 1.0])  # only the first honest reply was used
    assert m["resam-valid"] == 1 and m["resam-excluded"] == 9
    expected = {"nonfinite": 2, "shape": 1, "dtype": 1, "keys": 2, "records": 2, "duplicate": 1}
    for reason, count in expected.items():
        assert m[f"resam-excluded-{reason}"] == count, reason
    assert sum(s.excluded_total.values()) == 9
    assert np.isfinite(w(out)).all()


def test_reply_from_unsampled_node_is_excluded():
    s = ResilientAveraging("mean", lr=1.0, min_train_nodes=1, min_available_nodes=1)
    msgs = start_round(s, [1])
    stranger = instruction(42, THETA)
    replies = grad_replies(msgs, {1: [1, 1]}) + [reply(stranger, THETA)]
    _, m = s.aggregate_train(1, replies)
    assert m["resam-excluded-unexpected"] == 1 and m["resam-valid"] == 1


def test_too_few_valid_replies_keep_the_model_and_say_why():
    s = ResilientAveraging("cwtm", num_byzantine=2, min_train_nodes=5, exclusions_reduce_f=False)
    msgs = start_round(s, [1, 2, 3, 4, 5])
    replies = grad_replies(msgs, {1: [1, 1], 2: [1, 1], 3: [1, 1], 4: [np.nan, 0], 5: [np.inf, 0]})
    out, m = s.aggregate_train(1, replies)
    assert out is None and m["resam-skipped"] == 1 and m["resam-valid"] == 3
    assert "needs n > 2f" in s.round_log[-1]["skipped"]


def test_replies_proven_faulty_reduce_f_so_f_byzantine_nodes_cannot_skip_rounds():
    # n = 5, f = 2: two NaN replies prove two nodes faulty, so at most f - 2 = 0 of the other 3 are Byzantine:
    # cwtm runs with f = 0 (the plain mean of the 3) instead of skipping the round.
    s = ResilientAveraging("cwtm", num_byzantine=2, lr=0.5, min_train_nodes=5)
    msgs = start_round(s, [1, 2, 3, 4, 5])
    replies = grad_replies(msgs, {1: [1, 4], 2: [2, 5], 3: [6, 0], 4: [np.nan, 0], 5: [np.inf, 0]})
    out, m = s.aggregate_train(1, replies)
    np.testing.assert_allclose(w(out), [1.0 - 0.5 * 3.0, 2.0 - 0.5 * 3.0])
    assert m["resam-f"] == 0 and m["resam-valid"] == 3 and m["resam-skipped"] == 0


def test_missing_replies_do_not_reduce_f():
    # a late reply may be an honest node's: with 2 of 5 missing, f stays 2 and cwtm (n > 2f) cannot run on 3
    s = ResilientAveraging("cwtm", num_byzantine=2, min_train_nodes=5)
    msgs = start_round(s, [1, 2, 3, 4, 5])
    out, m = s.aggregate_train(1, grad_replies(msgs, {1: [1, 1], 2: [1, 1], 3: [1, 1]}))
    assert out is None and m["resam-missing"] == 2 and m["resam-f"] == 2 and m["resam-skipped"] == 1


def test_num_examples_is_never_a_weight():
    s = ResilientAveraging("mean", lr=1.0, min_train_nodes=2)
    msgs = start_round(s, [1, 2])
    r1 = reply(msgs[1], record(w=np.array([0, 0], np.float32), n=np.array(7, np.int64)), {"num-examples": 1})
    r2 = reply(
        msgs[2], record(w=np.array([2, 2], np.float32), n=np.array(7, np.int64)), {"num-examples": 10**9}
    )
    out, m = s.aggregate_train(1, [r1, r2])
    np.testing.assert_allclose(w(out), [0.0, 1.0])


def test_client_metrics_are_aggregated_by_median():
    s = ResilientAveraging("mean", lr=1.0, min_train_nodes=3)
    msgs = start_round(s, [1, 2, 3])
    rs = [
        reply(msgs[n], record(w=np.zeros(2, np.float32), n=np.array(7, np.int64)), {"train-loss": v})
        for n, v in [(1, 1.0), (2, 2.0), (3, 1e9)]
    ]
    _, m = s.aggregate_train(1, rs)
    assert m["train-loss"] == 2.0  # the client's own name, as FedAvg returns it; the server's are resam-*
    assert m["resam-valid"] == 3 and m["resam-lr"] == 1.0
    assert P.REPLY_MOMENTUM not in m  # a flag, not a metric


def test_configure_train_sends_round_lr_and_mode_and_samples_reproducibly():
    a = ResilientAveraging("mean", fraction_train=0.5, min_train_nodes=1, seed=3)
    b = ResilientAveraging("mean", fraction_train=0.5, min_train_nodes=1, seed=3)
    ma, mb = start_round(a, list(range(10))), start_round(b, list(range(10)))
    assert sorted(ma) == sorted(mb) and len(ma) == 5
    cfg = next(iter(ma.values())).content["config"]
    assert cfg[P.SERVER_ROUND] == 1 and cfg[P.SERVER_LR] == pytest.approx(0.1) and cfg[P.MODE] == "gradient"
    assert "lr" not in cfg  # never a key the user's app may own
    assert cfg["server-round"] == 1  # Flower's own round key, as FedAvg sends it


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"aggregator": "nope"}, "unknown aggregator"),
        ({"mode": "weights"}, "mode"),
        ({"num_byzantine": -1}, "num_byzantine"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"fraction_train": 1.5}, "fraction_train"),
        ({"lr_schedule": "cosine"}, "schedule"),
    ],
)
def test_bad_configuration_fails_at_build_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResilientAveraging(**kwargs)


def test_evaluate_metrics_use_median_and_ignore_error_replies():
    s = ResilientAveraging("mean")
    msgs = list(s.configure_evaluate(1, THETA, ConfigRecord(), FakeGrid([1, 2, 3])))
    rs = [
        reply(m, None, {"accuracy": v, "num-examples": 10})
        for m, v in zip(msgs, [0.9, 0.8, 0.0], strict=True)
    ]
    assert s.aggregate_evaluate(1, rs)["accuracy"] == pytest.approx(0.8)


def test_too_few_connected_nodes_fail_after_the_wait_timeout_with_the_counts():
    s = ResilientAveraging("mean", min_available_nodes=5, node_wait_timeout=0.2)
    with pytest.raises(RuntimeError, match="only 2 nodes connected, 5 needed"):
        start_round(s, [1, 2])


class LateGrid(FakeGrid):
    """No node at the first listing (a simulation just starting), all of them afterwards."""

    def __init__(self, nodes: list[int]) -> None:
        super().__init__(nodes)
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return [] if self.calls == 1 else list(self.nodes)


def test_nodes_that_connect_late_are_waited_for_and_the_adversary_chooses_among_them():
    s = SimulatedAdversary(
        ResilientAveraging("cwtm", num_byzantine=1, min_available_nodes=4, node_wait_timeout=5.0),
        "alie",
        1,
        seed=0,
    )
    grid = LateGrid([11, 12, 13, 14])
    msgs = list(s.configure_train(1, THETA, ConfigRecord(), grid))
    assert grid.calls >= 2
    assert sorted(m.metadata.dst_node_id for m in msgs) == [11, 12, 13, 14]
    roles = [m.content["config"].get("resam-byzantine") for m in msgs]
    assert sum(bool(r) for r in roles) == 1  # exactly f Byzantine nodes, among the real ones


def test_wrong_kind_replies_do_not_reduce_f():
    # an honest device without momentum_mod replies weights: excluded, but it proves nothing about intent
    s = ResilientAveraging("cwtm", num_byzantine=1, min_train_nodes=4)
    msgs = start_round(s, [1, 2, 3, 4])
    replies = grad_replies(msgs, {1: [1, 1], 2: [1, 1], 3: [1, 1]})
    replies += grad_replies({4: msgs[4]}, {4: [5, 5]}, kind={"num-examples": 1})
    out, m = s.aggregate_train(1, replies)
    assert m["resam-excluded-kind"] == 1 and m["resam-f"] == 1 and m["resam-valid"] == 3 and out is not None


def test_lr_schedules_against_their_formulas():
    from resam_flower.strategies import build_schedule

    rounds = [1, 2, 3, 10, 101, 300]
    cases = {
        ("constant", ()): [0.5] * 6,
        ("step", (("step_size", 2), ("gamma", 0.1))): [0.5 * 0.1**k for k in (0, 0, 1, 4, 50, 149)],
        ("inverse", (("decay", 100.0),)): [0.5 / (1 + (t - 1) / 100) for t in rounds],
        # bias correction of m_t = beta m + (1 - beta) g from m_0 = 0 (weight 1 - beta^t on the gradients)
        ("debiased", (("beta", 0.99),)): [0.5 / (1 - 0.99**t) for t in rounds],
        ("debiased", (("beta", 0.0),)): [0.5] * 6,
    }
    for (kind, params), expected in cases.items():
        schedule = build_schedule(0.5, kind, **dict(params))
        assert [schedule(t) for t in rounds] == pytest.approx(expected, rel=1e-12), kind
    assert build_schedule(0.5, "debiased", beta=0.99)(1) == pytest.approx(50.0)
    # a constant gradient g through RESAM's momentum and the debiased rate steps lr * g from round 1 on
    m, beta, schedule = 0.0, 0.9, build_schedule(0.5, "debiased", beta=0.9)
    for t in range(1, 6):
        m = beta * m + (1 - beta) * 2.0
        assert schedule(t) * m == pytest.approx(0.5 * 2.0)
    with pytest.raises(ValueError, match="beta"):
        build_schedule(0.5, "debiased", beta=1.0)


def test_debiased_schedule_takes_the_runs_momentum_and_bad_kinds_fail_at_config_time():
    from resam_flower.app.config import ExperimentConfig
    from resam_flower.app.server_app import build_strategy

    cfg = ExperimentConfig.from_run_config({"lr-schedule": "debiased", "momentum": 0.99, "lr": 2.0})
    assert build_strategy(cfg).schedule.describe() == "debiased(lr=2.0, beta=0.99)"
    with pytest.raises(ValueError, match="lr-schedule='cosine': lr schedule must be one of constant, step, "
                                         "inverse, debiased"):
        ExperimentConfig.from_run_config({"lr-schedule": "cosine"})


def test_debiased_schedule_with_node_sampling_warns_that_the_correction_is_partial(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="flwr"):
        debiased = {"lr_schedule": "debiased", "lr_schedule_params": {"beta": 0.9}}
        ResilientAveraging("mean", fraction_train=0.5, **debiased)
        ResilientAveraging("mean", **debiased)
    warned = [r.getMessage() for r in caplog.records if "corrected only in part" in r.getMessage()]
    assert warned == ["lr schedule debiased(lr=0.1, beta=0.9) divides by 1 - beta^t for the round t; with "
                      "fraction_train=0.5 a sampled worker's momentum has seen fewer rounds, so its bias is "
                      "corrected only in part"]
