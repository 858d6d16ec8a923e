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
