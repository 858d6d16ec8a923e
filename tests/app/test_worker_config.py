"""Run config of the lab's choices: weight-decay-at, data-split, worker-clip, and what the server derives."""

from __future__ import annotations

import pytest

from resam_flower.app.config import ExperimentConfig

BASE = {"dataset": "digits", "model": "mlp", "num-clients": 13, "num-byzantine": 3, "weight-decay": 1e-4}


def cfg(**kw) -> ExperimentConfig:
    return ExperimentConfig.from_run_config({**BASE, **kw})


def test_defaults_are_ours_server_decay_all_nodes_no_clipping():
    c = cfg()
    assert (c.weight_decay_at, c.data_split, c.worker_clip) == ("server", "all", 0.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"weight-decay-at": "client"}, "weight-decay-at must be one of server, worker, got 'client'"),
        ({"data-split": "byzantine"}, "data-split must be one of all, honest, got 'byzantine'"),
        ({"worker-clip": -1.0}, "worker-clip must be >= 0.0, got -1.0"),
        ({"weight-decay-at": 1}, "weight-decay-at must be str, got 1"),
        ({"attack": "lf-lab", "local-steps": 2}, "lf-lab redraws .* local-steps = 1 and mode = gradient.*=2"),
        ({"attack": "lf-lab", "mode": "model"}, "lf-lab .*mode='model'"),
        # names and data options fail when the config is validated, not when the data or model are loaded
        ({"dataset": "mnistt"}, r"unknown data set 'mnistt'; available: cifar10, digits"),
        ({"dataset": "digits", "data-splt": "x"},
         r"data set 'digits' takes no option splt \(run config data-<option>\); its options: test-fraction"),
        ({"model": "mlpp"}, r"unknown model 'mlpp'; available: cifar-cnn, logreg, mlp, mnist-cnn"),
    ],
)
def test_bad_values_raise_naming_the_key_the_value_and_the_bound(kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(**kw)


@pytest.mark.parametrize(
    ("kw", "server", "worker"),
    [
        ({}, 1e-4, 0.0),
        ({"weight-decay-at": "worker"}, 0.0, 1e-4),  # the server must not decay twice
        ({"mode": "model"}, 0.0, 0.0),  # model mode: the server applies trained weights
        ({"mode": "model", "weight-decay-at": "worker"}, 0.0, 1e-4),
    ],
)
def test_where_the_decay_acts(kw, server, worker):
    c = cfg(**kw)
    assert (c.server_weight_decay, c.worker_weight_decay) == (server, worker)


@pytest.mark.parametrize(
    ("kw", "parts"),
    [
        ({"attack": "alie"}, 13),
        ({"attack": "alie", "data-split": "honest"}, 10),  # n - f honest nodes
        ({"attack": "none", "data-split": "honest"}, 13),  # no adversary: every node is honest
        ({"attack": "alie", "num-byzantine": 0, "data-split": "honest"}, 13),
    ],
)
def test_number_of_data_partitions(kw, parts):
    assert cfg(**kw).num_data_partitions == parts


def test_the_new_keys_travel_to_the_workers():
    c = cfg(**{"weight-decay-at": "worker", "data-split": "honest", "worker-clip": 2.0, "attack": "lf-lab"})
    rec = c.to_config_record()
    sent = (rec["exp-weight-decay-at"], rec["exp-data-split"], rec["exp-worker-clip"])
    assert sent == ("worker", "honest", 2.0)
    back = ExperimentConfig.from_message(rec)
    assert (back.weight_decay_at, back.data_split, back.worker_clip) == sent and back.attack == "lf-lab"


def test_the_config_is_validated_once_on_the_server_and_workers_only_check_types():
    bad = {"aggregator": "no-such-rule", "num-byzantine": 12}
    with pytest.raises(ValueError, match="no-such-rule"):
        ExperimentConfig.from_run_config(bad)  # the server fails at start, naming the value
    worker = ExperimentConfig.from_message({f"exp-{k}": v for k, v in bad.items()})  # no second validation
    assert worker.aggregator == "no-such-rule"
    with pytest.raises(ValueError, match="batch-size must be int"):
        ExperimentConfig.from_message({"exp-batch-size": "32"})  # types are still checked


class _Nodes:
    """A grid with ``n`` connected nodes (what NodeSampler reads)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


@pytest.mark.parametrize(
    ("n", "f", "rule"),
    [(13, 3, "cwtm"), (51, 12, "krum"), (7, 2, "mda"), (10, 4, "cwmed"), (15, 2, "bulyan"),
     (13, 3, "nnm+cwtm"), (1500, 300, "cwtm")],
)
def test_a_fraction_train_that_samples_too_few_replies_fails_at_start_naming_the_least_fraction(n, f, rule):
    # the bound is the app's: its strategy samples with NodeSampler (min_train_nodes = 1); a run whose sample
    # is smaller than the rule's minimum stopped before round 1, after the data and model were loaded
    import re

    from resam_flower.aggregators import build
    from resam_flower.strategies.sampling import NodeSampler, NodeWaiter

    built = build(rule, f=f)
    need = built.min_inputs(f)

    def sampled(fraction: float) -> int:
        sampler = NodeSampler(0, n, NodeWaiter(1.0, 1.0))
        return len(sampler.sample(_Nodes(n), fraction, 1)[0])

    least = None
    for fraction in [k / 200 for k in range(1, 201)]:
        kw = {"num-clients": n, "num-byzantine": f, "aggregator": rule, "fraction-train": fraction}
        if sampled(fraction) >= need:
            cfg(**kw)
            continue
        message = (rf"{re.escape(built.spec)} needs {re.escape(built.requirement)}, i.e. {need} replies a "
                   rf"round: fraction-train={fraction} samples {sampled(fraction)} of the {n} clients")
        with pytest.raises(ValueError, match=message) as err:
            cfg(**kw)
        quoted = float(re.search(r"fraction-train >= ([0-9.]+) samples at least", str(err.value))[1])
        assert least in (None, quoted)
        least = quoted
    assert least is not None and sampled(least) >= need > sampled(round(least - 0.001, 3))
    cfg(**{"num-clients": n, "num-byzantine": f, "aggregator": rule, "fraction-train": least})
