"""The lab's label flipping (``lf-lab``): a Byzantine node sends the mean of the honest workers' flipped-label
gradients of the round (their own mini-batches, labels y -> 9 - y), clipped and decayed like honest gradients,
without momentum. Checked against an autograd reference written here, round after round."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from torch import nn

import tests.flower_helpers  # noqa: F401 - sets the TaskIdentity that hand-made messages need
from resam_flower import protocol as P
from resam_flower.app.config import ExperimentConfig
from resam_flower.app.task import round_generator
from resam_flower.app.worker import HONEST_PARTITIONS, make_client_app, train
from resam_flower.data import load_partition
from resam_flower.models import build_model
from tests.flower_helpers import instruction

LAM, CLIP, PARTS, HONEST = 1e-2, 0.8, 4, [0, 2, 3]
CFG = ExperimentConfig.from_run_config({
    "dataset": "digits", "model": "mlp", "num-clients": 5, "num-byzantine": 1, "attack": "lf-lab",
    "momentum": 0.9, "batch-size": 8, "seed": 6, "weight-decay": LAM, "weight-decay-at": "worker",
    "worker-clip": CLIP, "data-split": "honest",
})  # fmt: skip


def flipped_reference(model: nn.Module, pid: int, rnd: int) -> torch.Tensor:
    """Honest worker ``pid``'s batch this round, labels 9 - y, loss + lam/2 ||theta||^2, clipped to CLIP."""
    data = load_partition("digits", pid, PARTS, "iid", seed=CFG.seed)
    idx = torch.randperm(len(data), generator=round_generator(CFG.seed, pid, rnd))[: CFG.batch_size]
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(data.images[idx]), 9 - data.labels[idx])
    loss = loss + 0.5 * LAM * sum(p.square().sum() for p in params)
    g = torch.cat([x.flatten() for x in torch.autograd.grad(loss, params)])
    return g * min(1.0, CLIP / float(g.norm()))


def message(arrays: ArrayRecord, rnd: int, **extra):
    config = {**CFG.to_config_record(), P.SERVER_ROUND: rnd, P.DATA_PARTITIONS: PARTS, **extra}
    return instruction(9, arrays, config)


def flat(reply) -> torch.Tensor:
    state = reply.content["arrays"].to_torch_state_dict()
    return torch.cat([state[k].flatten() for k in state])


def context() -> Context:
    # a simulated node (the roles a server sends are honoured): byzantine_mod turns lf-lab into the flag
    roles = {P.SIMULATED_ROLES: True}
    return Context(run_id=1, node_id=9, node_config=roles, state=RecordDict(), run_config={})


def test_the_byzantine_reply_is_the_mean_of_the_honest_flipped_gradients_without_momentum():
    app, ctxt = make_client_app(), context()
    for rnd, seed in [(1, 0), (2, 1), (3, 2)]:  # a new global model each round
        model = build_model("mlp", 10, (1, 8, 8), seed=seed)
        arrays = ArrayRecord(model.state_dict())
        out = app(message(arrays, rnd, **{P.ROLE: "lf-lab", HONEST_PARTITIONS: HONEST}), ctxt)
        expected = torch.stack([flipped_reference(model, pid, rnd) for pid in HONEST]).mean(0)
        torch.testing.assert_close(flat(out), expected)  # round 2 and 3: no 0.9 * previous term
        assert out.content["metrics"][P.REPLY_MOMENTUM] == 1
        assert out.content["metrics"][P.MOMENTUM_NORM] == pytest.approx(float(expected.norm()), rel=1e-5)
        assert out.content["metrics"]["num-examples"] == 8 * len(HONEST)
    assert P.MOMENTUM_STATE not in ctxt.state.array_records  # the momentum mod never ran


def test_each_term_is_what_that_honest_worker_would_compute_on_flipped_labels():
    # The honest node holding partition 2 (flipping its own labels, beta = 0) computes exactly the lab's term
    # for partition 2: the Byzantine node really redraws the honest mini-batch of the round.
    model = build_model("mlp", 10, (1, 8, 8), seed=3)
    arrays = ArrayRecord(model.state_dict())
    honest = train(message(arrays, 5, **{P.DATA_PARTITION: 2, P.FLIP_LABELS: True}), context())
    lab = make_client_app()(message(arrays, 5, **{P.ROLE: "lf-lab", HONEST_PARTITIONS: "2"}), context())
    torch.testing.assert_close(flat(lab), flat(honest))
    torch.testing.assert_close(flat(lab), flipped_reference(model, 2, 5))


def test_missing_or_bad_inputs_are_refused():
    arrays = ArrayRecord(build_model("mlp", 10, (1, 8, 8), seed=0).state_dict())
    app = make_client_app()
    with pytest.raises(ValueError, match="lf-lab: the train config has no resam-honest-partitions"):
        app(message(arrays, 1, **{P.ROLE: "lf-lab"}), context())
    with pytest.raises(ValueError, match="resam-honest-partitions must be a list of partition ids"):
        app(message(arrays, 1, **{P.ROLE: "lf-lab", HONEST_PARTITIONS: "0,x"}), context())
    with pytest.raises(ValueError, match="lf-lab needs the honest nodes' partitions"):
        app(message(arrays, 1, **{P.ROLE: "lf-lab", HONEST_PARTITIONS: ""}), context())
    with pytest.raises(ValueError, match="'lab' reached the worker: it needs lab_label_flipping_mod"):
        train(message(arrays, 1, **{P.DATA_PARTITION: 0, P.FLIP_LABELS: "lab"}), context())
