"""Reference models: exact parameter counts, forward shapes, seeded init, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resam_flower.models import CifarCNN, MnistCNN, available_models, build_model, count_parameters


def _hand_count(shapes: list[tuple[int, ...]]) -> int:
    total = 0
    for s in shapes:
        n = 1
        for v in s:
            n *= v
        total += n
    return total


def test_mnist_cnn_has_431080_parameters():
    model = build_model("mnist-cnn", 10, (1, 28, 28))
    # conv 1->20 5x5 + bias, conv 20->50 5x5 + bias, fc 800->500, fc 500->10
    hand = _hand_count([(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)])
    assert hand == 431_080
    assert count_parameters(model) == 431_080
    assert [tuple(p.shape) for p in model.parameters()] == [
        (20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,),
    ]  # fmt: skip
    assert not list(model.buffers())


def test_mnist_cnn_layer_order():
    kinds = [type(m).__name__ for m in build_model("mnist-cnn").modules() if not list(m.children())]
    assert kinds == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear",
    ]  # fmt: skip


def test_cifar_cnn_parameter_count():
    model = build_model("cifar-cnn", 10, (3, 32, 32))
    convs = [(64, 3, 3, 3), (64,), (64, 64, 3, 3), (64,), (128, 64, 3, 3), (128,), (128, 128, 3, 3), (128,)]
    bns = [(64,), (64,), (64,), (64,), (128,), (128,), (128,), (128,)]  # weight and bias of each BN
    fcs = [(128, 8192), (128,), (10, 128), (10,)]
    assert count_parameters(model) == _hand_count(convs + bns + fcs) == 1_310_922
    assert count_parameters(build_model("cifar-cnn", batch_norm=False, in_shape=(3, 32, 32))) == 1_310_154
    # BN running statistics are buffers, not parameters
    assert sum(b.numel() for b in model.buffers()) == 2 * (64 + 64 + 128 + 128) + 4


def test_mlp_and_logreg_counts():
    assert count_parameters(build_model("mlp")) == 784 * 100 + 100 + 100 * 10 + 10 == 79_510
    two_layers = 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert count_parameters(build_model("mlp", hidden=(32, 16))) == two_layers
    assert count_parameters(build_model("mlp", hidden=[])) == 7_850
    assert count_parameters(build_model("logreg")) == 7_850
    assert count_parameters(build_model("logreg", 3, (1, 8, 8))) == 64 * 3 + 3


@pytest.mark.parametrize(
    "name,num_classes,in_shape",
    [
        ("mnist-cnn", 10, (1, 28, 28)),
        ("mnist-cnn", 7, (3, 32, 32)),
        ("cifar-cnn", 10, (3, 32, 32)),
        ("cifar-cnn", 4, (1, 8, 8)),
        ("mlp", 10, (1, 8, 8)),
        ("logreg", 2, (3, 5, 5)),
    ],
)
def test_forward_shapes_and_backward(name, num_classes, in_shape, device):
    model = build_model(name, num_classes, in_shape, seed=0, device=device)
    x = torch.randn(5, *in_shape, device=device)
    out = model(x)
    assert out.shape == (5, num_classes) and out.device.type == device.type and out.dtype == torch.float32
    nn.functional.cross_entropy(out, torch.zeros(5, dtype=torch.int64, device=device)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_outputs_are_logits_not_log_probabilities():
    model = build_model("mnist-cnn", seed=0)
    out = model(torch.randn(4, 1, 28, 28))
    assert not torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-3)


@pytest.mark.parametrize("name", ["mnist-cnn", "cifar-cnn", "mlp", "logreg"])
def test_seeded_init_is_deterministic_and_leaves_global_rng(name):
    shape = (3, 32, 32) if name == "cifar-cnn" else (1, 28, 28)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model(name, 10, shape, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before), "global RNG untouched"
    b = build_model(name, 10, shape, seed=1)
    c = build_model(name, 10, shape, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_registry_names_aliases_and_errors():
    assert available_models() == ["cifar-cnn", "logreg", "mlp", "mnist-cnn"]
    assert isinstance(build_model("cnn_mnist"), MnistCNN)
    assert isinstance(build_model("CIFAR_CNN", in_shape=(3, 32, 32)), CifarCNN)
    no_bn = build_model("cifar-cnn", in_shape=(3, 32, 32), **{"batch-norm": False})
    assert count_parameters(no_bn) == 1_310_154
    with pytest.raises(ValueError, match="unknown model 'resnet'; available: cifar-cnn"):
        build_model("resnet")
    with pytest.raises(ValueError, match="model 'mlp' takes no parameter width; it takes: hidden"):
        build_model("mlp", width=3)
    with pytest.raises(ValueError, match=r"at least 16x16, got in_shape=\(1, 8, 8\)"):
        build_model("mnist-cnn", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("logreg", 1)
    with pytest.raises(ValueError, match="dropout must be < 1"):
        build_model("cifar-cnn", dropout=1.0, in_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="seed must be >= 0"):
        build_model("mlp", seed=-1)


def test_model_trains_on_digits():
    """A few full-batch steps of the MLP on the digits data drop the loss (data and model fit together)."""
    from resam_flower.data import load_dataset

    train = load_dataset("digits", "train")
    model = build_model("mlp", train.num_classes, train.in_shape, seed=0, hidden=(32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(train.images), train.labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
