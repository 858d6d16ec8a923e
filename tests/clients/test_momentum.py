"""momentum_mod: m_t = beta m_{t-1} + (1 - beta) g_t kept in context.state, values checked round by round."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MessageType

from resam_flower.clients.momentum import GRADIENT_FLAG, MOMENTUM_STATE_KEY, momentum_mod
from tests.flower_helpers import context, instruction, record, reply

GLOBAL = record(w=np.array([1.0, 2.0, 3.0], dtype=np.float32), b=np.array([0.5], dtype=np.float32))


def gradient_app(grads):
    """Inner ClientApp replying with a given gradient per call (flagged as a gradient)."""
    calls = iter(grads)

    def app(msg, ctxt):
        g = next(calls)
        return reply(msg, record(w=g[:3], b=g[3:]), {"num-examples": 32, GRADIENT_FLAG: 1})

    return app


def run(mod, app, ctxt, arrays=GLOBAL, config=None):
    msg = instruction(ctxt.node_id, arrays, config or {"lr": 0.1})
    return mod(msg, ctxt, app)


def vec(rec):
    return np.concatenate([rec["w"].numpy(), rec["b"].numpy()])


def test_momentum_recursion_values_over_three_rounds():
    beta = 0.9
    grads = [np.array(v, dtype=np.float32) for v in ([1, 0, 0, 2], [0, 1, 0, -2], [3, 3, 3, 3])]
    mod, app, ctxt = momentum_mod(beta), gradient_app(grads), context()
    m = np.zeros(4)
    for g in grads:
        out = run(mod, app, ctxt)
        m = beta * m + (1 - beta) * g
        np.testing.assert_allclose(vec(out.content["arrays"]), m, rtol=1e-6)
        np.testing.assert_allclose(vec(ctxt.state[MOMENTUM_STATE_KEY]), m, rtol=1e-6)
    assert out.content["metrics"][GRADIENT_FLAG] == 1


def test_beta_zero_replies_the_gradient():
    g = np.array([1, -2, 3, 4], dtype=np.float32)
    out = run(momentum_mod(0.0), gradient_app([g]), context())
    np.testing.assert_allclose(vec(out.content["arrays"]), g)


def test_weights_reply_gives_gradient_from_local_lr():
    """A FedAvg-style client returns weights; g = (global - local) / local_lr."""
    local = record(w=np.array([0.8, 2.2, 3.0], dtype=np.float32), b=np.array([0.5], dtype=np.float32))

    def app(msg, ctxt):
        return reply(msg, local, {"num-examples": 10, "local-lr": 0.1})

    out = run(momentum_mod(0.5), app, context())
    expected = 0.5 * (np.array([1.0, 2.0, 3.0, 0.5]) - np.array([0.8, 2.2, 3.0, 0.5])) / 0.1
    np.testing.assert_allclose(vec(out.content["arrays"]), expected, rtol=1e-5)


def test_weights_reply_without_lr_is_an_error_reply():
    def app(msg, ctxt):
        return reply(msg, GLOBAL, {"num-examples": 10})

    out = run(momentum_mod(0.5), app, context(), config={"server-round": 1})
    assert out.has_error() and "local learning rate" in out.error.reason


def test_nodes_keep_separate_momentum():
    mod = momentum_mod(0.5)
    c1, c2 = context(1), context(2)
    run(mod, gradient_app([np.ones(4, np.float32)]), c1)
    run(mod, gradient_app([-np.ones(4, np.float32)]), c2)
    np.testing.assert_allclose(vec(c1.state[MOMENTUM_STATE_KEY]), 0.5)
    np.testing.assert_allclose(vec(c2.state[MOMENTUM_STATE_KEY]), -0.5)


def test_nonfinite_inner_reply_becomes_error_and_state_is_untouched():
    ctxt = context()
    mod = momentum_mod(0.9)
    run(mod, gradient_app([np.ones(4, np.float32)]), ctxt)
    before = vec(ctxt.state[MOMENTUM_STATE_KEY]).copy()
    out = run(mod, gradient_app([np.array([np.nan, 0, 0, 0], np.float32)]), ctxt)
    assert out.has_error()
    np.testing.assert_array_equal(vec(ctxt.state[MOMENTUM_STATE_KEY]), before)


def test_layout_change_resets_momentum():
    ctxt = context()
    mod = momentum_mod(0.5)
    run(mod, gradient_app([np.ones(4, np.float32)]), ctxt)
    other = record(w=np.zeros(2, np.float32), b=np.zeros(1, np.float32))

    def app(msg, c):
        return reply(msg, record(w=np.ones(2, np.float32), b=np.ones(1, np.float32)), {GRADIENT_FLAG: 1})

    out = run(mod, app, ctxt, arrays=other)
    np.testing.assert_allclose(
        np.concatenate([out.content["arrays"]["w"].numpy(), out.content["arrays"]["b"].numpy()]), 0.5
    )


def test_non_train_messages_pass_through():
    sentinel = object()
    msg = instruction(1, GLOBAL, kind=MessageType.EVALUATE)
    assert momentum_mod(0.9)(msg, context(), lambda m, c: sentinel) is sentinel


@pytest.mark.parametrize("beta", [-0.1, 1.0, 1.5])
def test_bad_beta_fails_at_build_time(beta):
    with pytest.raises(ValueError, match="beta"):
        momentum_mod(beta)
