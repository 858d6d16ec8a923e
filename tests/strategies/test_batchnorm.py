"""Models with BatchNorm: only parameters get the rule, the step and the decay; buffers are robust medians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from resam_flower import protocol as P
from resam_flower.clients import momentum_mod
from resam_flower.flat import buffer_keys
from resam_flower.strategies import ResilientAveraging
from tests.flower_helpers import FakeGrid, record, reply
from tests.reliability.inline_grid import InlineGrid

BN = dict(
    w=np.array([1.0, -2.0], np.float32),
    **{
        "bn.running_mean": np.array([0.5, 0.5], np.float32),
        "bn.running_var": np.array([4.0, 4.0], np.float32),
    },
    **{"bn.num_batches_tracked": np.array(3, np.int64)},
)


def test_buffers_are_the_median_of_reports_and_are_never_stepped_or_decayed():
    s = ResilientAveraging("cwmed", num_byzantine=1, lr=0.1, weight_decay=0.5, min_train_nodes=3)
    msgs = {
        m.metadata.dst_node_id: m
        for m in s.configure_train(1, record(**BN), ConfigRecord(), FakeGrid([1, 2, 3]))
    }
    assert list(msgs[1].content["config"][P.BUFFERS]) == ["bn.running_mean", "bn.running_var"]
    reports = {
        1: ([1, 1], [0.0, 1.0], [1.0, 2.0]),
        2: ([3, 3], [2.0, 3.0], [3.0, 4.0]),
        3: ([9, 9], [1e6, -1e6], [-5, 1e9]),
    }
    replies = [
        reply(
            msgs[n],
            record(
                w=np.float32(g),
                **{
                    "bn.running_mean": np.float32(rm),
                    "bn.running_var": np.float32(rv),
                    "bn.num_batches_tracked": np.array(3, np.int64),
                },
            ),
            {P.REPLY_MOMENTUM: 1},
        )
        for n, (g, rm, rv) in reports.items()
    ]
    out, _ = s.aggregate_train(1, replies)
    # parameters: theta - lr (median(g) + wd theta) = [1, -2] - 0.1 ([3, 3] + 0.5 [1, -2])
    np.testing.assert_allclose(out["w"].numpy(), [1 - 0.1 * 3.5, -2 - 0.1 * 2.0], rtol=1e-6)
    np.testing.assert_allclose(out["bn.running_mean"].numpy(), [2.0, 1.0])  # medians, not stepped
    np.testing.assert_allclose(out["bn.running_var"].numpy(), [1.0, 4.0])
    assert int(out["bn.num_batches_tracked"].numpy()) == 3


def _data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped images: channel means (2, -1, 0.5) and std 3, plus a class signal in channel 0."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 3, 32, 32, generator=gen) * 3.0 + torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1, 1)
    x[:, 0, 8:24, 8:24] += (2 * y.float() - 1).view(-1, 1, 1) * 1.5
    return x, y


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 5, stride=4)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 7 * 7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn1(self.conv(self.bn0(x)))).flatten(1))


def bn_gradient_app(num_nodes: int) -> ClientApp:
    """A user's gradient-replying app with a BatchNorm CNN: gradients for parameters, buffers as values."""
    app = ClientApp(mods=[momentum_mod(0.9)])
    model = BNNet()

    @app.train()
    def train(msg: Message, ctxt) -> Message:
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        gen = torch.Generator().manual_seed(1000 * int(msg.content["config"][P.SERVER_ROUND]) + ctxt.node_id)
        x, y = _data(32, gen)
        model.train()
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        params = dict(model.named_parameters())
        out = {
            k: (params[k].grad if k in params else v).detach().clone() for k, v in model.state_dict().items()
        }
        content = RecordDict(
            {"arrays": ArrayRecord(torch_state_dict=out), "metrics": MetricRecord({P.REPLY_GRADIENT: 1})}
        )
        return Message(content, reply_to=msg)

    return app


def test_a_batchnorm_cnn_learns_in_gradient_mode_and_its_statistics_match_the_data():
    torch.manual_seed(0)
    model = BNNet()
    assert buffer_keys(model) == [
        "bn0.running_mean",
        "bn0.running_var",
        "bn1.running_mean",
        "bn1.running_var",
    ]
    grid = InlineGrid(bn_gradient_app(6), 6)
    strategy = ResilientAveraging(
        "nnm+cwtm",
        num_byzantine=1,
        lr=0.2,
        weight_decay=1e-3,
        buffers=buffer_keys(model),
        min_train_nodes=6,
        min_available_nodes=6,
        fraction_evaluate=0,
    )
    result = strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=40)
    assert strategy.excluded_total == {}  # a gradient reply of a BN model is never refused for its buffers
    model.load_state_dict(result.arrays.to_torch_state_dict())
    # first BatchNorm sees the raw images: its statistics must be the data's (means 2, -1, 0.5; variance 9)
    torch.testing.assert_close(model.bn0.running_mean, torch.tensor([2.0, -1.0, 0.5]), atol=0.15, rtol=0)
    torch.testing.assert_close(model.bn0.running_var, torch.full((3,), 9.0), atol=0, rtol=0.1)
    x, y = _data(2000, torch.Generator().manual_seed(7))
    with torch.no_grad():  # the second one's: those of its input under the final model
        h = model.conv(model.bn0.eval()(x))
        torch.testing.assert_close(model.bn1.running_mean, h.mean((0, 2, 3)), atol=0.1, rtol=0.1)
        torch.testing.assert_close(model.bn1.running_var, h.var((0, 2, 3)), atol=0.1, rtol=0.2)
        accuracy = float((model.eval()(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9, accuracy


@pytest.mark.parametrize("buffers", [["w"], ["missing"]])
def test_buffers_that_are_not_float_arrays_of_the_model_are_refused(buffers):
    s = ResilientAveraging("mean", buffers=buffers, min_train_nodes=1, min_available_nodes=1)
    arrays = record(w=np.zeros(2, np.float32), n=np.array(1, np.int64))
    if buffers == ["w"]:  # a parameter may be declared a buffer: it is then averaged by median, not stepped
        s.configure_train(1, arrays, ConfigRecord(), FakeGrid([1]))
        assert s.spec.param_dim == 0
        return
    with pytest.raises(ValueError, match="not floating-point arrays of the model"):
        s.configure_train(1, arrays, ConfigRecord(), FakeGrid([1]))
