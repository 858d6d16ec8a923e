"""momentum_mod: the server's mode, buffers kept out of the momentum, bias correction, the reply's kind."""

from __future__ import annotations

import numpy as np
import pytest

from resam_flower import protocol as P
from resam_flower.clients import momentum_mod
from tests.flower_helpers import context, instruction, record, reply

GLOBAL = record(w=np.array([1.0, 2.0], np.float32), **{"bn.running_var": np.array([4.0], np.float32)})


def app_replying(arrays, metrics):
    def app(msg, ctxt):
        return reply(msg, arrays, metrics)

    return app


def test_model_mode_lets_the_inner_reply_through_unchanged():
    weights = record(w=np.array([0.5, 0.5], np.float32), **{"bn.running_var": np.array([3.0], np.float32)})
    out = momentum_mod(0.9)(
        instruction(1, GLOBAL, {P.MODE: "model", "lr": 0.1}), context(), app_replying(weights, {})
    )
    np.testing.assert_array_equal(out.content["arrays"]["w"].numpy(), [0.5, 0.5])
    assert P.REPLY_MOMENTUM not in out.content["metrics"]


def test_buffers_are_reported_as_values_and_only_parameters_become_momentum():
    ctxt, mod = context(), momentum_mod(0.5)
    grads = [([2.0, 4.0], 3.0), ([6.0, 0.0], 5.0)]
    expected_m = np.zeros(2)
    for g, var in grads:
        inner = record(w=np.array(g, np.float32), **{"bn.running_var": np.array([var], np.float32)})
        out = mod(
            instruction(1, GLOBAL, {P.SERVER_ROUND: 1}), ctxt, app_replying(inner, {P.REPLY_GRADIENT: 1})
        )
        expected_m = 0.5 * expected_m + 0.5 * np.array(g)
        np.testing.assert_allclose(out.content["arrays"]["w"].numpy(), expected_m)
        np.testing.assert_allclose(
            out.content["arrays"]["bn.running_var"].numpy(), [var]
        )  # the worker's value
        assert out.content["metrics"][P.REPLY_MOMENTUM] == 1
    assert list(ctxt.state[P.MOMENTUM_STATE].keys()) == ["w"]  # the momentum has no buffer in it


def test_a_parameters_only_gradient_reply_gets_the_global_buffers():
    inner = record(w=np.array([2.0, 2.0], np.float32))
    out = momentum_mod(0.0)(instruction(1, GLOBAL, {}), context(), app_replying(inner, {P.REPLY_GRADIENT: 1}))
    np.testing.assert_allclose(out.content["arrays"]["bn.running_var"].numpy(), [4.0])
    np.testing.assert_allclose(out.content["arrays"]["w"].numpy(), [2.0, 2.0])


@pytest.mark.parametrize("beta", [0.9, 0.5])
def test_bias_correction_divides_by_one_minus_beta_to_the_t(beta):
    ctxt, mod = context(), momentum_mod(beta, bias_correction=True)
    m = 0.0
    for t, g in enumerate([1.0, 3.0, -2.0], start=1):
        inner = record(w=np.array([g, g], np.float32), **{"bn.running_var": np.array([1.0], np.float32)})
        out = mod(instruction(1, GLOBAL, {}), ctxt, app_replying(inner, {P.REPLY_GRADIENT: 1}))
        m = beta * m + (1 - beta) * g
        np.testing.assert_allclose(out.content["arrays"]["w"].numpy(), [m / (1 - beta**t)] * 2, rtol=1e-6)
    np.testing.assert_allclose(
        ctxt.state[P.MOMENTUM_STATE]["w"].numpy(), [m, m], rtol=1e-6
    )  # kept uncorrected


def test_weights_reply_uses_the_users_lr_key_and_says_how_to_fix_a_missing_one():
    weights = record(w=np.array([0.0, 1.0], np.float32), **{"bn.running_var": np.array([4.0], np.float32)})
    out = momentum_mod(0.0)(instruction(1, GLOBAL, {"lr": 0.5}), context(), app_replying(weights, {}))
    np.testing.assert_allclose(out.content["arrays"]["w"].numpy(), [2.0, 2.0])  # (theta - w) / 0.5
    err = momentum_mod(0.0)(instruction(1, GLOBAL, {}), context(), app_replying(weights, {}))
    assert err.has_error() and "local_lr" in err.error.reason


def test_a_server_that_is_not_resam_gets_an_error_reply_not_momentums_it_would_average_as_weights():
    weights = record(w=np.array([0.9, 1.8], np.float32), **{"bn.running_var": np.array([4.0], np.float32)})
    msg = instruction(1, GLOBAL, {"lr": 0.1, "server-round": 1}, from_resam=False)  # FedAvg's config
    out = momentum_mod(0.9)(msg, context(), app_replying(weights, {}))
    assert out.has_error() and "the server is not ResilientAveraging" in out.error.reason
    assert "remove momentum_mod" in out.error.reason


def test_bias_correction_counts_from_a_fresh_momentum_after_a_layout_change():
    ctxt, mod = context(), momentum_mod(0.9, bias_correction=True)
    for g in (1.0, 3.0, -2.0):
        inner = record(w=np.array([g, g], np.float32), **{"bn.running_var": np.array([1.0], np.float32)})
        mod(instruction(1, GLOBAL, {}), ctxt, app_replying(inner, {P.REPLY_GRADIENT: 1}))
    wider = record(w=np.array([1.0, 2.0, 3.0], np.float32))  # the model changed: the momentum restarts
    out = mod(instruction(1, wider, {}), ctxt, app_replying(record(w=np.full(3, 5.0, np.float32)),
                                                            {P.REPLY_GRADIENT: 1}))
    np.testing.assert_allclose(out.content["arrays"]["w"].numpy(), [5.0] * 3, rtol=1e-6)  # (0.1·5)/(1-0.9)


def test_bias_correction_survives_a_restart_from_the_momentum_directory(tmp_path):
    grads = [1.0, 3.0, -2.0, 4.0]

    def run(restart_after: int | None) -> list[float]:
        mod = momentum_mod(0.9, bias_correction=True, state_dir=tmp_path / str(restart_after))
        ctxt, sent = context(), []
        for rnd, g in enumerate(grads, start=1):
            if rnd == restart_after:
                ctxt = context()  # a restarted SuperNode: memory empty, the directory kept
            inner = record(w=np.array([g, g], np.float32), **{"bn.running_var": np.array([1.0], np.float32)})
            out = mod(instruction(1, GLOBAL, {P.SERVER_ROUND: rnd}), ctxt,
                      app_replying(inner, {P.REPLY_GRADIENT: 1}))
            sent.append(float(out.content["arrays"]["w"].numpy()[0]))
        return sent

    assert run(3) == pytest.approx(run(None), rel=1e-6)


def test_the_reply_flags_are_read_from_every_metric_record_and_the_used_lr_is_reported():
    from flwr.app import Message, MetricRecord, RecordDict

    def two_records(msg, ctxt):  # the gradient flag in a second MetricRecord
        content = RecordDict({"arrays": record(w=np.array([0.5, 0.5], np.float32)),
                              "train": MetricRecord({"loss": 1.0}),
                              "flags": MetricRecord({P.REPLY_GRADIENT: 1})})
        return Message(content=content, reply_to=msg)

    out = momentum_mod(0.0)(instruction(1, GLOBAL, {"lr": 0.1}), context(), two_records)
    np.testing.assert_allclose(out.content["arrays"]["w"].numpy(), [0.5, 0.5])  # a gradient, not weights
    assert all(P.USED_LOCAL_LR not in rec for rec in out.content.metric_records.values())
    weights = record(w=np.array([0.0, 1.0], np.float32))
    out = momentum_mod(0.0)(instruction(1, GLOBAL, {"lr": 0.5}), context(), app_replying(weights, {}))
    assert out.content["metrics"][P.USED_LOCAL_LR] == 0.5
    msg = instruction(1, GLOBAL, {"learning-rate": 0.5})
    err = momentum_mod(0.0)(msg, context(), app_replying(weights, {}))
    assert "train config key lr (your train config's keys: learning-rate)" in err.error.reason


@pytest.mark.parametrize(
    "records, gradient",
    [
        ([{P.REPLY_GRADIENT: 0}, {P.REPLY_GRADIENT: 1}], True),  # a 1.0 in any record: the server's reading
        ([{P.REPLY_GRADIENT: [1.0]}], False),  # a list is no flag (it used to raise TypeError in the mod)
        ([{"loss": 1.0}, {P.REPLY_GRADIENT: 1.0}], True),
    ],
)
def test_the_mod_reads_the_gradient_flag_as_the_server_screens_it(records, gradient):
    from flwr.app import Message, MetricRecord, RecordDict

    from resam_flower.strategies.validation import reply_kind_error

    def app(msg, ctxt):
        content = RecordDict({"arrays": record(w=np.array([0.5, 0.5], np.float32))})
        for i, rec in enumerate(records):
            content[f"m{i}"] = MetricRecord(rec)
        return Message(content=content, reply_to=msg)

    inner = app(instruction(1, GLOBAL, {"lr": 0.5}), context())
    assert (reply_kind_error(inner, "gradient") is None) == gradient  # the server's screen, on the bare reply
    out = momentum_mod(0.0)(instruction(1, GLOBAL, {"lr": 0.5}), context(), app)
    # a gradient passes as is; trained weights w' become (w - w') / lr = ([1, 2] - [0.5, 0.5]) / 0.5
    expected = [0.5, 0.5] if gradient else [1.0, 3.0]
    np.testing.assert_allclose(out.content["arrays"]["w"].numpy(), expected)


def test_a_restart_that_finds_no_momentum_file_says_it_starts_from_zero(tmp_path, caplog):
    import logging
    import shutil

    mod = momentum_mod(0.5, state_dir=tmp_path)
    inner = app_replying(record(w=np.array([2.0, 2.0], np.float32)), {P.REPLY_GRADIENT: 1})
    with caplog.at_level(logging.INFO, logger="flwr"):
        mod(instruction(1, GLOBAL, {P.SERVER_ROUND: 1}), context(), inner)
        assert "starting from zero" not in caplog.text  # round 1: nothing to say
        kept = mod(instruction(1, GLOBAL, {P.SERVER_ROUND: 2}), context(), inner)  # restart: from the file
        assert "starting from zero" not in caplog.text
        shutil.rmtree(tmp_path)
        lost = mod(instruction(1, GLOBAL, {P.SERVER_ROUND: 3}), context(), inner)  # restart, files gone
    assert f"round 3: no earlier momentum of this node in memory or in {tmp_path}" in caplog.text
    np.testing.assert_allclose(kept.content["arrays"]["w"].numpy(), [1.5, 1.5])  # 0.5 * 1 + 0.5 * 2
    np.testing.assert_allclose(lost.content["arrays"]["w"].numpy(), [1.0, 1.0])  # 0.5 * 0 + 0.5 * 2
