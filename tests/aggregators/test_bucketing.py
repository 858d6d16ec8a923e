"""Bucketing: shapes, exact bucket means, seeded reproducibility and state, distribution over seeds."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.bucketing import Bucketing, SeededGenerator


def x_of(n: int, d: int = 3, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_hand_worked_single_bucket_and_shuffle_only():
    x = torch.tensor([[1.0], [2.0], [4.0], [8.0]], dtype=torch.float64)
    assert Bucketing(s=4, seed=0)(x).tolist() == [[3.75]]
    assert Bucketing(s=10, seed=0)(x).tolist() == [[3.75]]
    out = Bucketing(s=1, seed=0)(x)
    assert sorted(out.squeeze(1).tolist()) == [1.0, 2.0, 4.0, 8.0]


def test_hand_worked_uneven_buckets():
    """n = 5, s = 2: buckets of 2, 2 and 1; each output is the mean of the bucket reported in last_info."""
    x = torch.tensor([[1.0], [2.0], [4.0], [8.0], [16.0]], dtype=torch.float64)
    pre = Bucketing(s=2, seed=3)
    out = pre(x)
    buckets = pre.last_info["buckets"]
    assert [len(b) for b in buckets] == [2, 2, 1]
    assert sorted(i for b in buckets for i in b) == [0, 1, 2, 3, 4]
    assert out.squeeze(1).tolist() == [sum(x[i, 0].item() for i in b) / len(b) for b in buckets]
    # Exact invariant whatever the permutation: sizes-weighted outputs sum to the inputs' sum.
    assert sum(len(b) * v for b, v in zip(buckets, out.squeeze(1).tolist(), strict=True)) == 31.0


@pytest.mark.parametrize(("n", "s"), [(1, 1), (7, 1), (7, 2), (7, 3), (9, 3), (4, 7)])
def test_output_shape_and_f_passed_through(n, s):
    pre = Bucketing(f=2, s=s, seed=1)
    assert pre.output_shape(n, 2) == (math.ceil(n / s), 2)
    out, f = pre.apply(x_of(n), 2)
    assert out.shape == (math.ceil(n / s), 3) and f == 2


def test_seed_reproducibility_and_state_round_trip(tmp_path):
    xs = [x_of(10, seed=i) for i in range(5)]
    a, b = Bucketing(s=3, seed=11), Bucketing(s=3, seed=11)
    assert all(torch.equal(a(x), b(x)) for x in xs[:2])
    torch.save(a.state_dict(), tmp_path / "b.pt")
    c = Bucketing(s=3, seed=0)
    c.load_state_dict(torch.load(tmp_path / "b.pt"))
    for x in xs[2:]:
        assert torch.equal(a(x), c(x))
    a.reset()
    assert torch.equal(a(xs[0]), Bucketing(s=3, seed=11)(xs[0]))
    outs = {tuple(Bucketing(s=3, seed=s)(xs[0]).flatten().tolist()) for s in range(5)}
    assert len(outs) > 1  # the seed matters


def test_output_multiset_is_a_function_of_the_seed_and_the_input_multiset_in_distribution():
    """n = 4, s = 2: each of the 3 pairings has probability 1/3, for the inputs in any order."""
    x = torch.tensor([[1.0], [2.0], [4.0], [8.0]], dtype=torch.float64)
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        counts = collections.Counter()
        for seed in range(600):
            out = Bucketing(s=2, seed=seed)(x[order])
            counts[tuple(sorted(out.squeeze(1).tolist()))] += 1
            assert torch.equal(out, Bucketing(s=2, seed=seed)(x[order]))  # same seed, same multiset
        assert set(counts) == {(1.5, 6.0), (2.5, 5.0), (3.0, 4.5)}
        assert all(abs(c - 200) < 60 for c in counts.values()), counts  # ~5 sigma band


def test_pipeline_sizes():
    pipe = build("bucketing(s=2, seed=0)+smea", f=1)
    assert pipe.min_inputs() == 5  # ceil(5 / 2) = 3 > 2f
    assert torch.isfinite(pipe(x_of(5))).all()
    with pytest.raises(ValueError, match="needs"):
        pipe(x_of(4))


def test_nonfinite_rows():
    x = x_of(7)
    bad = x.clone()
    bad[2, 0] = float("nan")
    out, f = Bucketing(f=2, s=2, seed=5).apply(bad, 2)
    assert f == 1 and out.shape == (3, 3)
    ref, _ = Bucketing(f=2, s=2, seed=5).apply(x[[0, 1, 3, 4, 5, 6]], 2)
    assert torch.equal(out, ref)
    bad[[4, 5]] = float("inf")
    with pytest.raises(NonFiniteInputError, match="3 of 7 inputs are non-finite, more than f=2"):
        Bucketing(f=2, s=2, seed=5)(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"s": 0}, "s must be >= 1, got 0"),
        ({"s": 2.5}, "s must be an integer"),
        ({"seed": -3}, "seed must be >= 0, got -3"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Bucketing(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s", [1, 3])
def test_dtype_and_device(dtype, s, device):
    x = x_of(8, dtype=dtype).to(device)
    pre = Bucketing(s=s, seed=2)
    out = pre(x)
    assert out.dtype == dtype and out.device.type == device.type
    expected = torch.stack([x[b].mean(0) for b in pre.last_info["buckets"]])
    torch.testing.assert_close(out, expected)
    assert pre.state_dict()["device"].startswith(device.type)


def test_seeded_generator_restores_pending_state_on_first_use():
    gen = SeededGenerator(5)
    first = torch.randperm(10, generator=gen.get("cpu"))
    state = gen.state_dict()
    again = SeededGenerator(0)
    again.load_state_dict(state)
    assert again.state_dict()["rng_state"].equal(state["rng_state"])  # kept until used
    resumed = torch.randperm(10, generator=again.get("cpu"))
    assert torch.equal(resumed, torch.randperm(10, generator=gen.get("cpu")))
    assert not torch.equal(first, torch.randperm(10, generator=SeededGenerator(6).get("cpu")))


def test_registry():
    pre = build("bucketing(s=2, seed=1)+mean", f=1).pre[0]
    assert isinstance(pre, Bucketing) and pre.spec == "bucketing(s=2, seed=1)"
    torch.manual_seed(0)
    drawn = build("bucketing(s=2)+mean", f=1).pre[0]
    assert drawn.spec == "bucketing(s=2)" and drawn.state_dict() == {"seed": drawn.seed}
    torch.manual_seed(0)
    assert build("bucketing(s=2)+mean", f=1).pre[0].seed == drawn.seed
