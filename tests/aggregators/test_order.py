"""Order-statistic kernels: the comparator network, its pruning, and both kernel paths vs torch.sort."""

from __future__ import annotations

import itertools

import pytest
import torch

from resam_flower.aggregators import _order


def _first(s, acc, out):
    out.copy_(s[0])


def _rank(r):
    def combine(s, acc, out):
        out.copy_(s[r])

    return combine


def _stack_ranks(x, ranks, method, block):
    """Each requested rank, one kernel call per rank (exercises single-output pruning)."""
    return torch.stack(
        [_order.coordinatewise(x, [r], _rank(r), method=method, block=block) for r in ranks]
    )


def _range_sum(x, lo, hi, method, block):
    def comb(vals, acc, out):
        out.copy_(acc)

    return _order.coordinatewise(x, [], comb, (lo, hi), method=method, block=block)


@pytest.mark.parametrize("n", range(1, 13))
def test_merge_exchange_sorts_every_zero_one_input(n):
    # 0-1 principle: a comparator network sorting all 2^n binary inputs sorts every input.
    comps = _order.merge_exchange(n)
    assert all(0 <= i < j < n for i, j in comps)
    for bits in itertools.product((0, 1), repeat=n):
        v = list(bits)
        for i, j in comps:
            if v[i] > v[j]:
                v[i], v[j] = v[j], v[i]
        assert v == sorted(bits)


def test_merge_exchange_sizes_match_knuth():
    # Batcher's merge-exchange comparator counts (Knuth, TAOCP 3, §5.3.4): n = 2^t gives
    # (t^2 - t + 4) 2^(t-2) - 1.
    for t in range(1, 7):
        assert len(_order.merge_exchange(2**t)) == (t * t - t + 4) * 2 ** (t - 2) - 1
    assert _order.merge_exchange(1) == ()


def test_pruning_keeps_only_what_is_needed():
    full = len(_order.merge_exchange(20))
    median = _order.plan(20, (9, 10))
    assert 0 < len(median.ops) < 2 * full
    sum_all = _order.plan(20, (), 0, 20)  # the sum of all ranks needs no comparator, only copies
    assert all(kind == 2 for kind, *_ in sum_all.ops) and len(sum_all.ops) == 20
    minimum = _order.plan(20, (0,))
    assert len(minimum.ops) == 19  # a tournament of n - 1 lone min ops
    assert all(kind == 0 for kind, *_ in minimum.ops)
    assert median.slots <= 21
    # every op reads handles already written (or input rows), never writes an input row, and the
    # requested ranks end in their output rows
    written = set(range(20))
    for _, a, b, o in median.ops:
        assert a in written and b in written and o >= 20
        written.add(o)
    assert {20 + median.slots + 9, 20 + median.slots + 10} <= written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13, 16, 20, 31, 33, 60])
def test_ranks_exact_vs_sort_with_ties_and_infinities(n, dtype):
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-3, 4, (n, 203), generator=g).to(dtype)
    x[torch.rand(x.shape, generator=g) < 0.1] = float("inf")
    x[torch.rand(x.shape, generator=g) < 0.1] = float("-inf")
    ref = x.sort(dim=0).values
    for method in ("network", "sort"):
        got = _stack_ranks(x, range(n), method, block=64)  # 4 blocks, the last one narrower
        assert torch.equal(got, ref), method
    # several ranks at once, in any order
    ranks = [n - 1, 0, n // 2] if n > 2 else [0]
    seen = []

    def keep(s, acc, out):
        seen.append({r: s[r].clone() for r in ranks})

    _order.coordinatewise(x, ranks, keep, method="network", block=1000)
    assert all(torch.equal(seen[0][r], ref[r]) for r in ranks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,f", [(1, 0), (3, 1), (5, 0), (10, 2), (20, 4), (21, 10), (33, 5), (60, 12)])
def test_range_sums_vs_sort(n, f, dtype):
    g = torch.Generator().manual_seed(100 + n)
    x = torch.randn(n, 150, generator=g, dtype=dtype)
    x[:, ::3] = torch.randint(-2, 3, (n, 50), generator=g).to(dtype)  # ties in a third of the columns
    ref = x.sort(dim=0).values[f : n - f].sum(0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for method in ("network", "sort"):
        got = _range_sum(x, f, n - f, method, block=40)
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, **tol)


def test_infinities_on_one_side_sum_to_infinity():
    x = torch.tensor([[1.0, 2.0], [float("inf"), 3.0], [float("inf"), float("-inf")]])
    got = _range_sum(x, 1, 3, "network", block=2)
    assert torch.equal(got, torch.tensor([float("inf"), 5.0]))


def test_input_is_not_modified_and_noncontiguous_input_works():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(500, 9, generator=g)
    x = base.T  # (9, 500), not contiguous
    keep = x.clone()
    got = _stack_ranks(x, range(9), "network", block=128)
    assert torch.equal(x, keep)
    assert torch.equal(got, x.sort(dim=0).values)


def test_auto_method_is_exact_on_both_sides_of_the_size_switch():
    g = torch.Generator().manual_seed(2)
    for d in (_order.SMALL_D - 1, _order.SMALL_D + 5):
        x = torch.randn(6, d, generator=g)
        assert torch.equal(_stack_ranks(x, [2, 3], "auto", None), x.sort(0).values[2:4])


def test_requires_grad_input_and_empty_columns():
    x = torch.randn(5, 7, requires_grad=True)
    got = _order.coordinatewise(x, [2], _rank(2), method="network")
    assert not got.requires_grad
    assert torch.equal(got, x.detach().sort(0).values[2])
    assert _order.coordinatewise(torch.empty(4, 0), [1], _first).shape == (0,)


def test_bad_arguments_raise():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="method"):
        _order.coordinatewise(x, [0], _first, method="quickselect")
    with pytest.raises(ValueError, match="n=4"):
        _order.coordinatewise(x, [4], _first)
    with pytest.raises(ValueError, match="n=4"):
        _order.coordinatewise(x, [], _first, (3, 2))
    with pytest.raises(ValueError, match="block"):
        _order.coordinatewise(x, [0], _first, block=0)


def test_default_block_keeps_row_ops_single_threaded_on_cpu():
    assert _order.default_block(torch.zeros(2, 2)) == 32768
    assert _order.default_block(torch.zeros(2, 2, dtype=torch.float64)) == 16384


def test_thread_count_does_not_change_results():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(13, 2000, generator=g)
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(_order.coordinatewise(x, [3], _rank(3), (2, 11), method="network", block=64))
            outs.append(_order.coordinatewise(x, [], lambda s, a, o: o.copy_(a), (2, 11), block=64,
                                              method="network"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], x.sort(0).values[3])
    for k in range(2, 6):
        assert torch.equal(outs[k], outs[k % 2])


def test_dimension_factor():
    assert _order.dimension_factor(20, 4, 1) == 1.0
    assert _order.dimension_factor(20, 4, 9) == 3.0
    assert _order.dimension_factor(20, 4, 10**6) == 15**0.5
    assert _order.dimension_factor(20, 4, None) == 15**0.5
    assert _order.dimension_factor(1, 0, 5) == 0.0


def test_range_over_dimension_factor_bound_holds():
    # sum_k range_k^2 <= min(d, m - 1) * diameter^2, the inequality behind dimension_factor.
    g = torch.Generator().manual_seed(3)
    for m, d in [(2, 5), (3, 50), (5, 3), (8, 200), (16, 1000)]:
        for pts in (torch.randn(m, d, generator=g, dtype=torch.float64),
                    torch.eye(m, d, dtype=torch.float64), torch.rand(m, d, generator=g).round().double()):
            ranges = pts.max(0).values - pts.min(0).values
            diam = torch.cdist(pts, pts).max()
            assert ranges.square().sum() <= min(d, m - 1) * diam**2 * (1 + 1e-12)


def test_cuda_matches_cpu(device):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(11, 3000, generator=g)
    ref = x.sort(0).values
    for method in ("network", "sort"):
        got = _stack_ranks(x.to(device), [0, 5, 10], method, block=1000)
        assert got.device.type == device.type
        assert torch.equal(got.cpu(), ref[[0, 5, 10]])


def _child_computes(queue):
    x = torch.arange(40 * 300, dtype=torch.float32).reshape(40, 300).remainder_(7)
    out = _order.coordinatewise(x, [5], _rank(5), method="network", block=16)
    queue.put(bool(torch.equal(out, x.sort(0).values[5])))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_forked_child_does_not_reuse_the_parents_threads():
    import multiprocessing as mp

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _child_computes(mp.get_context("spawn").SimpleQueue())  # parent's pool now exists
        ctx = mp.get_context("fork")
        queue = ctx.SimpleQueue()
        child = ctx.Process(target=_child_computes, args=(queue,))
        child.start()
        child.join(timeout=60)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive and child.exitcode == 0 and queue.get()
    finally:
        torch.set_num_threads(threads)


def test_inference_mode_caller_with_worker_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            x = torch.arange(7 * 20000, dtype=torch.float32).reshape(7, 20000).remainder_(11)
            got = _order.coordinatewise(x, [3], _rank(3), method="network", block=64)
        assert torch.equal(got, x.sort(0).values[3])
    finally:
        torch.set_num_threads(threads)
