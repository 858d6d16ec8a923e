"""Dropouts: up to f sampled nodes do not answer (crash, timeout: no reply) or fail (error reply).

Flower's ``Grid.send_and_receive(..., timeout)`` returns the replies that arrived in time, so a timed-out
node is a missing reply, and a ClientApp that raised comes back as an error reply. The round must aggregate
the remaining replies, exactly as the rule would on them, whenever the rule's condition holds for them, and
otherwise keep the model and say why; ``missing`` and ``excluded-error`` count what happened.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from resam_flower.aggregators import build
from resam_flower.app.config import ExperimentConfig
from resam_flower.app.server_app import run_experiment
from resam_flower.app.worker import make_client_app
from resam_flower.protocol import REPLY_MOMENTUM
from resam_flower.strategies import ResilientAveraging
from tests.flower_helpers import FakeGrid, record, reply
from tests.reliability.inline_grid import InlineGrid

THETA = record(w=np.array([0.5, -1.0, 2.0], np.float32), n=np.array(3, np.int64))
LR = 0.5


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    yield
    logging.getLogger("flwr").setLevel(logging.INFO)


def gradients(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def one_round(rule: str, f: int, n: int, dropped: set[int], failed: set[int]):
    s = ResilientAveraging(rule, num_byzantine=f, lr=LR, min_train_nodes=n, min_available_nodes=n, seed=0)
    nodes = list(range(1, n + 1))
    msgs = {m.metadata.dst_node_id: m for m in s.configure_train(1, THETA, ConfigRecord(), FakeGrid(nodes))}
    g = gradients(n)
    replies = []
    for i, node in enumerate(nodes):
        if node in dropped:
            continue
        if node in failed:
            from flwr.app import Error, Message

            replies.append(Message(Error(code=0, reason="node crashed"), reply_to=msgs[node]))
            continue
        replies.append(reply(msgs[node], record(w=g[i], n=np.array(3, np.int64)), {REPLY_MOMENTUM: 1}))
    out, metrics = s.aggregate_train(1, replies[::-1])  # arrival order is not node order
    kept = [i for i, node in enumerate(nodes) if node not in dropped | failed]
    return s, out, metrics, g[kept]


CASES = [("nnm+cwtm", 2, 7), ("krum", 2, 8), ("gm", 1, 5), ("cc", 2, 7), ("mda", 2, 7), ("bulyan", 1, 8)]


@pytest.mark.parametrize("rule, f, n", CASES)
def test_up_to_f_dropouts_aggregate_the_remaining_replies_when_the_rule_allows(rule, f, n):
    for k_drop, k_fail in itertools.product(range(f + 1), repeat=2):
        if k_drop + k_fail > f:
            continue
        dropped, failed = set(range(2, 2 + k_drop)), set(range(n - k_fail + 1, n + 1))
        s, out, m, remaining = one_round(rule, f, n, dropped, failed)
        assert m["resam-missing"] == k_drop and m.get("resam-excluded-error", 0) == k_fail
        assert m["resam-valid"] == n - k_drop - k_fail
        f_eff = f  # neither a missing nor an error reply proves a node Byzantine: f stays
        assert m["resam-f"] == f_eff
        need = build(rule, f=f).min_inputs(f_eff)
        if len(remaining) >= need:
            assert out is not None and m["resam-skipped"] == 0, s.round_log[-1].get("skipped")
            agg = build(rule, f=f).aggregate(torch.from_numpy(remaining), f_eff).numpy()
            expected = THETA["w"].numpy() - LR * agg
            np.testing.assert_array_equal(out["w"].numpy(), expected.astype(np.float32))
        else:
            assert out is None and m["resam-skipped"] == 1
            assert f"needs {build(rule, f=f).requirement}" in s.round_log[-1]["skipped"]


@pytest.mark.parametrize("rule, f, n", [("cwtm", 2, 6), ("krum", 1, 3), ("mda", 2, 5)])
def test_too_many_dropouts_for_the_rule_keep_the_model_and_say_why(rule, f, n):
    """n = min_inputs (+ 1): one or two nodes missing break n > 2f (missing replies do not reduce f); the
    round says so."""
    s, out, m, remaining = one_round(rule, f, n, dropped={1, n} if n > 4 else {1}, failed=set())
    assert len(remaining) < build(rule, f=f).min_inputs(f)
    assert out is None and m["resam-skipped"] == 1
    reason = s.round_log[-1]["skipped"]
    missing = n - len(remaining)
    assert reason == (
        f"{len(remaining)} valid replies, {rule} needs n > 2f (>= {2 * f + 1}, f={f}); {missing} sampled "
        "node(s) sent no reply before the round's deadline (round_timeout=600 s, unless start(timeout=...) "
        "set another: raise it if local training takes longer)"
    )


def test_a_run_with_failing_nodes_goes_on(tmp_path):
    """Real worker, in-process grid: nodes drop out or fail in some rounds; one round has too few replies."""
    torch.set_num_threads(1)
    cfg = {
        "dataset": "digits", "model": "mlp", "num-clients": 6, "num-byzantine": 1, "attack": "alie",
        "aggregator": "nnm+cwtm", "lr": 0.5, "batch-size": 16, "num-server-rounds": 6, "eval-every": 6,
        "results-dir": str(tmp_path), "run-name": "dropouts", "seed": 1,
    }  # fmt: skip
    c = ExperimentConfig.from_run_config(cfg)
    missing = {2: {1001}, 4: {1000, 1001, 1002, 1005}, 5: {1003}}  # round -> nodes that do not answer
    errors = {3: {1004}, 6: {1005}}  # round -> nodes whose ClientApp fails (an error reply)
    grid = InlineGrid(
        make_client_app(),
        6,
        fail=lambda rnd, node: node in missing.get(rnd, ()),
        error=lambda rnd, node: node in errors.get(rnd, ()),
    )
    summary = run_experiment(grid, c)
    log = {int(e["round"]): e for e in grid_log(tmp_path)}
    assert summary["rounds"] == 6 and summary["skipped_rounds"] == 1
    assert [int(log[r]["missing"]) for r in range(1, 7)] == [0, 1, 0, 4, 1, 0]
    assert [int(log[r]["valid"]) for r in range(1, 7)] == [6, 5, 5, 2, 5, 5]
    assert log[4]["skipped"].startswith(
        "2 valid replies, nnm+cwtm needs nnm: n > 2f; cwtm: n > 2f (>= 3, f=1); 4 sampled node(s) sent no "
        "reply before the round's deadline")
    assert all(log[r]["skipped"] == "" for r in (1, 2, 3, 5, 6))
    assert summary["excluded_by_reason"] == {"error": 2}
    # it learns despite the failures, well above chance (0.10): 0.404 with seed 1 (with the earlier failure
    # pattern: 0.357, and seeds 2, 3: 0.407, 0.499)
    assert summary["final_test_accuracy"] >= 0.25


def grid_log(run_dir):
    import csv

    return list(csv.DictReader((run_dir / "dropouts" / "metrics.csv").open()))
