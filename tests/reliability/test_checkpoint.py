"""Checkpoint/resume: a run killed with SIGKILL after its checkpoint of round K, then resumed, ends with the
bit-identical model of an uninterrupted run; checkpoints are atomic and safe to load; momentum files follow
the run's lineage (a resumed run never reads momentum from the discarded future)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from resam_flower import protocol as P
from resam_flower.app.config import ExperimentConfig
from resam_flower.app.server_app import run_experiment
from resam_flower.app.worker import make_client_app
from resam_flower.clients.momentum import GRADIENT_FLAG, MOMENTUM_STATE_KEY, momentum_mod
from resam_flower.clients.momentum_store import (
    CHECKPOINT_ROUND_KEY,
    LINEAGE_KEY,
    MOMENTUM_DIR_KEY,
    Lineage,
    MomentumStore,
)
from resam_flower.strategies import ResilientAveraging
from resam_flower.strategies.checkpoint import Checkpointer, model_digest, stable_simulation_node_ids
from tests.flower_helpers import FakeGrid, context, instruction, record, reply
from tests.reliability.inline_grid import InlineGrid
from tests.reliability.kill_resume import run_and_kill

BASE = {
    "dataset": "digits",
    "model": "mlp",
    "num-clients": 6,
    "num-byzantine": 1,
    "attack": "alie",
    "momentum": 0.9,
    "lr": 0.5,
    "lr-schedule": "inverse",
    "lr-decay": 4.0,
    "batch-size": 16,
    "num-server-rounds": 8,
    "eval-every": 2,
    "fraction-train": 0.8,
    "checkpoint-every": 3,
    "seed": 3,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/reliability/conftest.py


def run_inline(cfg: dict) -> dict:
    c = ExperimentConfig.from_run_config(cfg)
    return run_experiment(InlineGrid(make_client_app(), c.num_clients), c)


def comparable(summary: dict) -> dict:
    drop = {"wall_time_s", "resumed_from_round", "config", "run_name"}
    return {k: v for k, v in summary.items() if k not in drop}


def rows(run_dir) -> list[dict]:
    import csv

    out = []
    for row in csv.DictReader((run_dir / "metrics.csv").open()):
        row.pop("aggregate-time-s")  # wall-clock figures differ between runs; everything else must not
        row.pop("round-time-s", None)
        out.append(row)
    return out


class Crash(Exception):
    pass


def crash_after_round(cfg: dict, rnd: int) -> None:
    """Run in-process until round ``rnd + 1``'s replies are in, then die (no summary; memory lost)."""
    c = ExperimentConfig.from_run_config(cfg)
    grid = InlineGrid(make_client_app(), c.num_clients)
    real = grid.send_and_receive

    def send_and_receive(messages, timeout=None):
        replies = real(messages, timeout)  # the workers have trained (momentum files of rnd + 1 written)
        if grid.calls > 2 * rnd:
            raise Crash
        return replies

    grid.send_and_receive = send_and_receive
    with pytest.raises(Crash):
        run_experiment(grid, c)


@pytest.mark.parametrize("aggregator", ["nnm+cwtm", "cc", "bucketing(s=2)+cwtm"])
def test_crash_then_resume_gives_the_bit_identical_final_model(tmp_path, aggregator):
    # bucketing(s=2)+cwtm needs 5 replies for f = 1: with 4 of 6 sampled every round was skipped (and two
    # unchanged models compared equal); it samples all 6 here, and no round may be skipped
    fraction = 1.0 if aggregator.startswith("bucketing") else BASE["fraction-train"]
    cfg = dict(BASE, aggregator=aggregator, **{"results-dir": str(tmp_path), "fraction-train": fraction})
    full = run_inline(dict(cfg, **{"run-name": "full"}))
    assert full["skipped_rounds"] == 0 and full["final_test_accuracy"] > 0.5, full
    crashed = dict(cfg, **{"run-name": "crashed"})
    crash_after_round(crashed, 4)
    assert Checkpointer.load(tmp_path / "crashed" / "checkpoint.pt").round == 3
    resumed = run_inline(dict(crashed, resume=True))
    assert resumed["resumed_from_round"] == 3
    assert resumed["final_model_sha256"] == full["final_model_sha256"]
    assert comparable(resumed) == comparable(full)  # evaluations, exclusions, Byzantine nodes, rounds
    assert rows(tmp_path / "crashed") == rows(tmp_path / "full")  # every round's log, lr and norm included


@pytest.mark.slow
@pytest.mark.parametrize("aggregator", ["nnm+cwtm", "cc"])
def test_sigkill_then_resume_gives_the_bit_identical_final_model(tmp_path, aggregator):
    """A real process killed with SIGKILL right after its checkpoint of round 3 was written."""
    cfg = dict(BASE, aggregator=aggregator, **{"results-dir": str(tmp_path / "a")})
    full = run_inline(dict(cfg, **{"run-name": "full"}))
    killed = dict(cfg, **{"run-name": "killed"})
    at = run_and_kill(killed, kill_after_round=3, delay=0.15)
    run_dir = tmp_path / "a" / "killed"
    assert at == 3 and not (run_dir / "summary.json").exists()  # it died mid-way, after round 3's checkpoint
    shutil.copytree(run_dir, tmp_path / "b" / "killed")

    resumed = run_inline(dict(killed, resume=True))
    assert resumed["resumed_from_round"] == 3
    assert resumed["final_model_sha256"] == full["final_model_sha256"]
    assert comparable(resumed) == comparable(full)
    assert rows(run_dir) == rows(tmp_path / "a" / "full")

    # The same resume without the workers' momentum files (as with memory-only momentum) does not match.
    shutil.rmtree(tmp_path / "b" / "killed" / "momentum")
    no_momentum = run_inline(dict(killed, resume=True, **{"results-dir": str(tmp_path / "b")}))
    assert no_momentum["final_model_sha256"] != full["final_model_sha256"]


def test_resume_refuses_a_changed_configuration(tmp_path):
    cfg = dict(
        BASE, aggregator="cwtm", **{"results-dir": str(tmp_path), "run-name": "r", "num-server-rounds": 3}
    )
    run_inline(cfg)
    with pytest.raises(ValueError, match="aggregator: 'cwtm' -> 'cwmed'"):
        run_inline(dict(cfg, aggregator="cwmed", resume=True))
    longer = run_inline(
        dict(cfg, resume=True, **{"num-server-rounds": 5})
    )  # extending a finished run is fine
    assert longer["resumed_from_round"] == 3 and longer["rounds"] == 5


FLAG = {GRADIENT_FLAG: 1}


# -- the checkpoint file ------------------------------------------------------------------------------
def strategy_after_rounds(rule="cc", rounds=2):
    s = ResilientAveraging(rule, num_byzantine=1, lr=0.5, min_train_nodes=4, min_available_nodes=4, seed=1)
    theta = record(w=np.array([1.0, 2.0], np.float32), n=np.array(7, np.int64))
    rng = np.random.default_rng(0)
    for rnd in range(1, rounds + 1):
        msgs = {
            m.metadata.dst_node_id: m
            for m in s.configure_train(rnd, theta, ConfigRecord(), FakeGrid([1, 2, 3, 4]))
        }
        grads = [
            reply(m, record(w=rng.normal(size=2).astype(np.float32), n=np.array(7, np.int64)), FLAG)
            for m in msgs.values()
        ]
        theta, _ = s.aggregate_train(rnd, grads)
    return s, theta


def test_checkpoint_round_trip_restores_rule_state_rng_and_model(tmp_path):
    s, theta = strategy_after_rounds()
    ck = Checkpointer(tmp_path / "c.pt", every=1, config={"a": 1})
    ck.save(s, 2, theta)
    loaded = Checkpointer.load(tmp_path / "c.pt")
    assert loaded.round == 2 and model_digest(loaded.arrays) == model_digest(theta)
    assert list(loaded.arrays.keys()) == ["w", "n"] and loaded.arrays["n"].numpy().dtype == np.int64
    fresh = ResilientAveraging(
        "cc", num_byzantine=1, lr=0.5, min_train_nodes=4, min_available_nodes=4, seed=1
    )
    Checkpointer(tmp_path / "c.pt", every=1, config={"a": 1}).resume(fresh, loaded)
    assert torch.equal(fresh.rule.state_dict()["v"], s.rule.state_dict()["v"])  # CC's centre
    assert fresh.sampler.rng.random() == s.sampler.rng.random()  # the sampling stream continues identically
    assert fresh.round_offset == 2 and fresh.round_log == s.round_log


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    s, theta = strategy_after_rounds()
    ck = Checkpointer(tmp_path / "c.pt", every=1)
    ck.save(s, 1, theta)

    def torn(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError):
        ck.save(s, 2, theta)
    assert Checkpointer.load(tmp_path / "c.pt").round == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_loading_never_executes_code_and_rejects_foreign_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    torch.save({"format": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        Checkpointer.load(tmp_path / "evil.pt")
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a resam-flower checkpoint"):
        Checkpointer.load(tmp_path / "other.pt")


def test_resume_refuses_another_lr_schedule(tmp_path):
    s, theta = strategy_after_rounds()
    Checkpointer(tmp_path / "c.pt", every=1).save(s, 2, theta)
    other = ResilientAveraging("cc", num_byzantine=1, lr=0.25)
    with pytest.raises(ValueError, match="lr schedule"):
        Checkpointer(tmp_path / "c.pt", every=1).resume(other, Checkpointer.load(tmp_path / "c.pt"))


# -- workers' momentum across restarts ------------------------------------------------------------------
def test_lineage_round_trip_and_generations():
    lin = Lineage.fresh("aa").resumed(10, "bb").resumed(20, "cc")
    assert str(lin) == "aa:1,bb:11,cc:21" and Lineage.parse(str(lin)) == lin
    assert [lin.generation_at(r) for r in (1, 10, 11, 20, 21, 99)] == ["aa", "aa", "bb", "bb", "cc", "cc"]
    # restarting again from 10 drops the generations after it
    assert str(lin.resumed(10, "dd")) == "aa:1,dd:11"
    with pytest.raises(ValueError, match="bad lineage"):
        Lineage.parse("aa;1")


GLOBAL = record(w=np.array([1.0, 2.0], np.float32))


def momentum_round(mod, ctxt, rnd, g, lineage, ckpt, tmp_path):
    cfg = {
        P.SERVER_ROUND: rnd,
        LINEAGE_KEY: str(lineage),
        CHECKPOINT_ROUND_KEY: ckpt,
        MOMENTUM_DIR_KEY: str(tmp_path),
    }
    msg = instruction(ctxt.node_id, GLOBAL, cfg)

    def app(m, c):
        return reply(m, record(w=np.asarray(g, np.float32)), {GRADIENT_FLAG: 1})

    return mod(msg, ctxt, app).content["arrays"]["w"].numpy()


def test_resumed_worker_uses_the_momentum_of_the_checkpoint_round_not_a_later_one(tmp_path):
    """Generation A runs rounds 1-3 with a checkpoint at 2, dies; generation B resumes after round 2."""
    mod, a = momentum_mod(0.5), Lineage.fresh("aaaa")
    ctxt = context(7)
    ctxt.node_config["partition-id"] = 4
    m1 = momentum_round(mod, ctxt, 1, [2, 2], a, 0, tmp_path)
    m2 = momentum_round(mod, ctxt, 2, [4, 0], a, 0, tmp_path)
    momentum_round(mod, ctxt, 3, [100, 100], a, 2, tmp_path)  # the discarded future
    np.testing.assert_allclose(m1, [1, 1])
    np.testing.assert_allclose(m2, [2.5, 0.5])
    b = a.resumed(2, "bbbb")
    # (i) a SuperNode that survived the server restart still holds round 3's momentum in memory: not used
    out = momentum_round(mod, ctxt, 3, [0, 0], b, 2, tmp_path)
    np.testing.assert_allclose(out, 0.5 * m2)
    # (ii) a restarted node (empty memory) reads round 2's file; round 3's stale file was deleted
    store = MomentumStore(tmp_path, 4)
    assert [(r, g) for r, g, _ in store.files()] == [(2, "aaaa"), (3, "bbbb")]
    fresh = context(7)
    fresh.node_config["partition-id"] = 4
    out = momentum_round(mod, fresh, 4, [0, 0], b, 2, tmp_path)
    np.testing.assert_allclose(out, 0.25 * m2)


def test_momentum_files_are_pruned_to_what_a_restart_can_need(tmp_path):
    store = MomentumStore(tmp_path, 0)
    lin = Lineage.fresh("aa")
    for r in range(1, 8):
        store.write(r, "aa", torch.full((2,), float(r)))
    store.write(9, "zz", torch.zeros(2))  # a stale file of another generation
    # kept: the newest file, and the newest of a round <= the checkpoint round (what a resume can need)
    assert store.prune(lin, checkpoint_round=4) == 6
    assert [r for r, _, _ in store.files()] == [4, 7]
    assert store.prune(lin, checkpoint_round=None) == 1
    assert [r for r, _, _ in store.files()] == [7]
    assert torch.equal(store.read(store.latest(8, lin)[1], 2), torch.full((2,), 7.0))
    assert store.read(store.latest(8, lin)[1], 3) is None  # another model's layout: not used


def test_a_restarted_supernode_resumes_its_momentum_but_a_new_run_does_not(tmp_path):
    """Node config momentum directory, no server checkpointing (no lineage sent): files are per run."""
    mod = momentum_mod(0.5)

    def node(run_id):
        ctxt = context(3)
        ctxt.run_id = run_id
        ctxt.node_config[MOMENTUM_DIR_KEY] = str(tmp_path)
        return ctxt

    def step(ctxt, rnd, g):
        msg = instruction(3, GLOBAL, {P.SERVER_ROUND: rnd})
        out = mod(msg, ctxt, lambda m, c: reply(m, record(w=np.asarray(g, np.float32)), {GRADIENT_FLAG: 1}))
        return out.content["arrays"]["w"].numpy()

    step(node(1), 1, [2, 2])
    np.testing.assert_allclose(step(node(1), 2, [0, 0]), [0.5, 0.5])  # restarted: m_1 read back from disk
    np.testing.assert_allclose(step(node(2), 1, [0, 0]), [0.0, 0.0])  # another run: starts from zero
    assert len(MomentumStore(tmp_path, 3).files()) == 1  # the other run's files were pruned


def test_in_memory_momentum_is_unchanged_without_a_momentum_directory(tmp_path):
    mod, ctxt = momentum_mod(0.5), context()
    for g in ([2, 2], [4, 0]):
        msg = instruction(ctxt.node_id, GLOBAL, {P.SERVER_ROUND: 1})
        mod(msg, ctxt, lambda m, c, g=g: reply(m, record(w=np.asarray(g, np.float32)), {GRADIENT_FLAG: 1}))
    np.testing.assert_allclose(ctxt.state[MOMENTUM_STATE_KEY]["w"].numpy(), [2.5, 0.5])
    assert list(tmp_path.iterdir()) == [] and MOMENTUM_STATE_KEY + "-round" not in ctxt.state


# -- node ids in simulation -----------------------------------------------------------------------------
def register(n):
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    return _register_nodes(n, factory)


def test_simulation_node_ids_are_a_function_of_the_seed():
    with stable_simulation_node_ids(5):
        a = register(4)
    with stable_simulation_node_ids(5):
        b = register(4)
    with stable_simulation_node_ids(6):
        c = register(4)
    assert a == b and sorted(a.values()) == [0, 1, 2, 3]
    assert set(a) != set(c) and set(register(4)) != set(a)  # other seed, or outside the block: other ids


def test_resume_says_when_there_is_no_checkpoint_and_refuses_fewer_rounds_than_it_holds(tmp_path, caplog):
    cfg = dict(BASE, aggregator="cwtm", **{"results-dir": str(tmp_path), "run-name": "r",
                                           "num-server-rounds": 3})
    with caplog.at_level(logging.WARNING, logger="flwr"):
        fresh = run_inline(dict(cfg, resume=True))  # nothing to resume: a fresh run, said
    assert fresh["resumed_from_round"] == 0 and fresh["rounds"] == 3
    assert f"no checkpoint at {tmp_path / 'r' / 'checkpoint.pt'}" in caplog.text
    with pytest.raises(ValueError, match=r"num-server-rounds = 2 is below the round of the checkpoint it "
                                         r"would resume, 3 .*: give num-server-rounds >= 3"):
        run_inline(dict(cfg, resume=True, **{"num-server-rounds": 2}))
