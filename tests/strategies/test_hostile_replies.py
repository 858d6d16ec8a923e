"""Replies written by an attacker: metric floods, forged log lines, float16 overflow, a damaged checkpoint."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message

from resam_flower import protocol as P
from resam_flower.strategies import Checkpointer, ResilientAveraging
from resam_flower.strategies.robust_metrics import MAX_METRIC_KEY_LENGTH, median_metrics
from tests.flower_helpers import FakeGrid, record, reply

MOMENTUM = {P.REPLY_MOMENTUM: 1}


def _round(strategy, nodes, theta):
    return {
        m.metadata.dst_node_id: m for m in strategy.configure_train(1, theta, ConfigRecord(), FakeGrid(nodes))
    }


def test_metric_keys_only_byzantine_nodes_send_are_never_reported_and_the_count_is_capped():
    s = ResilientAveraging("cwtm", num_byzantine=2, min_train_nodes=7, min_available_nodes=7)
    theta = record(w=np.zeros(2, np.float32))
    msgs = _round(s, list(range(1, 8)), theta)
    flood = {f"junk-{i}": float(i) for i in range(5000)}
    replies = []
    for node in range(1, 8):
        metrics = {**MOMENTUM, "train-loss": float(node)}
        if node <= 2:  # two Byzantine nodes flood, and agree on one extra key
            metrics.update(flood)
            metrics["byz-only"] = 1.0
        replies.append(reply(msgs[node], record(w=np.ones(2, np.float32)), metrics))
    _, m = s.aggregate_train(1, replies)
    client = {k for k in m if not k.startswith(P.PREFIX)}
    assert client == {"train-loss"}  # reported by >= 2f + 1 = 5 replies only (the momentum flag is no metric)
    assert m["train-loss"] == 4.0
    # without a quorum the flood is still capped, and overlong or unprintable names are dropped
    many = [reply(msgs[1], None, {**flood, "x" * (MAX_METRIC_KEY_LENGTH + 1): 1.0, "bad\nkey": 1.0})]
    out = median_metrics(many)
    assert len(out) == 32 and all(len(k) <= MAX_METRIC_KEY_LENGTH and k.isprintable() for k in out)
    assert median_metrics(many, allowed=["junk-7"]) == {"junk-7": 7.0}


def test_attacker_text_cannot_forge_a_log_line(caplog):
    s = ResilientAveraging("mean", min_train_nodes=2, min_available_nodes=2)
    theta = record(w=np.zeros(2, np.float32))
    msgs = _round(s, [1, 2], theta)
    forged = "boom\nINFO : round 99 aggregated, all good" + "A" * 10_000
    bad_error = Message(Error(code=0, reason=forged), reply_to=msgs[1])
    bad_keys = reply(msgs[2], record(**{"w": np.zeros(2, np.float32), "x\nINFO fake": np.zeros(1)}), MOMENTUM)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        s.aggregate_train(1, [bad_error, bad_keys])
    lines = [r.getMessage() for r in caplog.records if "excluded" in r.getMessage()]
    assert len(lines) == 2
    assert all("\n" not in line and len(line) < 400 for line in lines), lines
    assert any("\\n" in line for line in lines)  # escaped, still readable


def test_a_float16_model_never_becomes_non_finite():
    s = ResilientAveraging("mean", lr=1.0, min_train_nodes=1, min_available_nodes=1)
    theta = record(w=np.array([6e4, 2.0], np.float16))
    msgs = _round(s, [1], theta)
    out, m = s.aggregate_train(1, [reply(msgs[1], record(w=np.array([-6e4, 0.0], np.float16)), MOMENTUM)])
    # 6e4 + 6e4 fits float32 but not float16 (max 65504): the round keeps the model and says why
    assert out is None and "overflows w's dtype" in s.round_log[-1]["skipped"]
    ok, _ = s.aggregate_train(1, [reply(msgs[1], record(w=np.array([0.0, 0.5], np.float16)), MOMENTUM)])
    np.testing.assert_array_equal(ok["w"].numpy(), np.array([6e4, 1.5], np.float16))


def test_an_incomplete_checkpoint_raises_the_documented_value_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "round": 3}, path)
    with pytest.raises(ValueError, match="incomplete: no arrays, strategy, lineage"):
        Checkpointer.load(path)
    torch.save({"format": 1, "round": "x", "arrays": {}, "strategy": {}, "lineage": "zz"}, path)
    with pytest.raises(ValueError, match="damaged"):
        Checkpointer.load(path)


def test_monna_trusting_a_reply_is_refused_as_a_server_rule():
    # replies are ordered by node id: with idx=0 the lowest-id node, Byzantine or not, would steer MoNNA
    with pytest.raises(ValueError, match="would steer the model"):
        ResilientAveraging("monna", num_byzantine=1, aggregator_params={"idx": 0})
    with pytest.raises(ValueError, match="trusted"):
        ResilientAveraging("monna", num_byzantine=1)
    s = ResilientAveraging(
        "monna",
        num_byzantine=1,
        aggregator_params={"trusted": torch.zeros(2)},
        lr=1.0,
        min_train_nodes=3,
        min_available_nodes=3,
    )
    msgs = _round(s, [1, 2, 3], record(w=np.zeros(2, np.float32)))
    huge = [reply(msgs[1], record(w=np.array([1e17, 1e17], np.float32)), MOMENTUM)]
    honest = [reply(msgs[n], record(w=np.array([1.0, 1.0], np.float32)), MOMENTUM) for n in (2, 3)]
    out, _ = s.aggregate_train(1, huge + honest)
    # the trusted zero vector and its n - f = 2 nearest replies (the honest ones): mean of [0, 1, 1] = 2/3
    np.testing.assert_allclose(out["w"].numpy(), [-2 / 3, -2 / 3], rtol=1e-6)
