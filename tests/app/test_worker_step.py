"""The worker's gradient: weight decay at the worker and per-worker clipping, against hand computations.

A softmax-regression model (one Linear layer) has the closed-form cross-entropy gradient
``dL/dW = mean_b (p_b - e_{y_b}) x_b^T``, ``dL/db = mean_b (p_b - e_{y_b})``, written out below; the worker
must add ``lambda * theta`` (parameters only) and then clip the whole parameter gradient to norm ``c``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resam_flower.app.config import ExperimentConfig
from resam_flower.app.task import regularise_and_clip, round_generator, worker_step
from resam_flower.data.base import DataSplit

N, D, C, B = 40, 4, 3, 8
SEED, PID, ROUND = 3, 1, 5


def data() -> DataSplit:
    g = torch.Generator().manual_seed(0)
    images = torch.randn((N, 1, 2, 2), generator=g, dtype=torch.float64)  # float64: exact comparisons
    return DataSplit(images, torch.randint(0, C, (N,), generator=g), C)


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, C)).double()


def cfg(**kw) -> ExperimentConfig:
    base = {"dataset": "digits", "model": "mlp", "num-clients": 4, "num-byzantine": 1, "batch-size": B,
            "weight-decay": 0.1, "seed": SEED}  # fmt: skip
    return ExperimentConfig.from_run_config({**base, **kw})


def batch(split: DataSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """The worker's batch: the first B indices of randperm(N) from its (seed, partition, round) stream."""
    idx = torch.randperm(N, generator=round_generator(SEED, PID, ROUND))[:B]
    return split.images[idx].flatten(1).double(), split.labels[idx]


def closed_form(m: nn.Module, split: DataSplit) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch(split)
    w, b = m[1].weight.detach(), m[1].bias.detach()
    p = torch.softmax(x @ w.T + b, dim=1)
    delta = p - nn.functional.one_hot(y, C).double()
    return delta.T @ x / B, delta.mean(0)


def reply(m: nn.Module, c: ExperimentConfig, split: DataSplit) -> tuple[torch.Tensor, torch.Tensor]:
    rec, metrics = worker_step(m, split, c, round_generator(SEED, PID, ROUND))
    assert metrics["resam-gradient"] == 1.0
    state = rec.to_torch_state_dict()
    return state["1.weight"].double(), state["1.bias"].double()


def test_weight_decay_at_the_server_leaves_the_gradient_alone():
    split, m = data(), model()
    gw, gb = closed_form(m, split)
    w, b = reply(m, cfg(**{"weight-decay-at": "server"}), split)
    torch.testing.assert_close(w, gw)
    torch.testing.assert_close(b, gb)


def test_weight_decay_at_the_worker_adds_lambda_theta():
    split, m = data(), model()
    gw, gb = closed_form(m, split)
    theta_w, theta_b = m[1].weight.detach().clone(), m[1].bias.detach().clone()
    w, b = reply(m, cfg(**{"weight-decay-at": "worker"}), split)
    torch.testing.assert_close(w, gw + 0.1 * theta_w)
    torch.testing.assert_close(b, gb + 0.1 * theta_b)


@pytest.mark.parametrize("at", ["server", "worker"])
def test_clipping_scales_the_whole_parameter_gradient_to_norm_c(at):
    split, m = data(), model()
    gw, gb = closed_form(m, split)
    if at == "worker":
        gw, gb = gw + 0.1 * m[1].weight.detach(), gb + 0.1 * m[1].bias.detach()
    norm = torch.sqrt(gw.square().sum() + gb.square().sum())
    c = 0.5 * float(norm)  # below the norm: clipped to exactly c, same direction
    w, b = reply(m, cfg(**{"weight-decay-at": at, "worker-clip": c}), split)
    torch.testing.assert_close(w, gw * (c / norm))
    torch.testing.assert_close(b, gb * (c / norm))
    # above the norm: untouched
    w, b = reply(model(), cfg(**{"weight-decay-at": at, "worker-clip": 2.0 * float(norm)}), split)
    torch.testing.assert_close(w, gw)
    torch.testing.assert_close(b, gb)


def test_k_local_steps_decay_and_clip_every_step():
    # K = 2 SGD steps at rate eta: theta_{k+1} = theta_k - eta * clip(g(theta_k) + lambda theta_k), each g on
    # the stream's next batch; the reference uses autograd on 0.5 * lambda * ||theta||^2 added to the loss.
    split, eta, lam, c = data(), 0.3, 0.1, 0.05
    m = model()
    ref = model()
    gen = round_generator(SEED, PID, ROUND)
    for _ in range(2):
        idx = torch.randperm(N, generator=gen)[:B]
        x, y = split.images[idx].double(), split.labels[idx]
        params = list(ref.parameters())
        loss = nn.functional.cross_entropy(ref(x), y) + 0.5 * lam * sum(p.square().sum() for p in params)
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        scale = min(1.0, c / float(norm))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(eta * scale * g)
    c_cfg = cfg(**{"weight-decay-at": "worker", "worker-clip": c, "local-steps": 2})
    rec, metrics = worker_step(m, split, c_cfg, round_generator(SEED, PID, ROUND), local_lr=eta)
    assert metrics["local-lr"] == eta and "resam-gradient" not in metrics
    state = rec.to_torch_state_dict()
    torch.testing.assert_close(state["1.weight"].double(), ref[1].weight.detach())
    torch.testing.assert_close(state["1.bias"].double(), ref[1].bias.detach())


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, C)
        self.bn = nn.BatchNorm1d(C)

    def forward(self, x):
        return self.bn(self.lin(x.flatten(1)))


def test_decay_and_clipping_touch_parameters_only_and_buffers_are_reported_as_values():
    torch.manual_seed(2)
    net = BNNet().double()
    with torch.no_grad():
        net.bn.running_var.fill_(4.0)  # a buffer a wrong decay/clip would change
    split = data()
    c = cfg(**{"weight-decay-at": "worker", "worker-clip": 1e-3})
    x, _ = batch(split)
    expected_mean = 0.9 * 0.0 + 0.1 * net.lin(x).detach().mean(0)  # BatchNorm's running-mean update
    rec, _ = worker_step(net, split, c, round_generator(SEED, PID, ROUND))
    state = rec.to_torch_state_dict()
    grads = [state[k].double() for k, _ in net.named_parameters()]
    assert float(torch.sqrt(sum(g.square().sum() for g in grads))) == pytest.approx(1e-3, rel=1e-9)
    torch.testing.assert_close(state["bn.running_mean"].double(), expected_mean)
    batch_var = net.lin(x).detach().var(0)  # unbiased, as BatchNorm's running estimate
    torch.testing.assert_close(state["bn.running_var"].double(), 0.9 * 4.0 + 0.1 * batch_var)
    assert int(state["bn.num_batches_tracked"]) == 1


def test_regularise_and_clip_returns_the_norm_before_clipping():
    m = model()
    for p in m.parameters():
        p.grad = torch.full_like(p, 2.0)
    count = sum(p.numel() for p in m.parameters())
    theta_sq = sum(float(p.detach().square().sum()) for p in m.parameters())
    cross = sum(float(p.detach().sum()) for p in m.parameters())
    # ||2 + lam theta||^2 = 4 count + 4 lam sum(theta) + lam^2 ||theta||^2, lam = 0.5
    expected = (4 * count + 2 * cross + 0.25 * theta_sq) ** 0.5
    assert regularise_and_clip(m, 0.5, 1.0) == pytest.approx(expected, rel=1e-12)
    total = sum(float(p.grad.square().sum()) for p in m.parameters())
    assert total == pytest.approx(1.0, rel=1e-12)
