"""Fused C kernels of the coordinate-wise rules (``_fused``) against sort-based references, bit for bit,
on both paths (fused and the torch network / sort fallbacks), and the fallback where they cannot run.

The kernels are compiled on first use into the cache of ``_fused.cache_dir()`` (a fraction of a second
each, announced by a log line); later runs load them from there. Without a C compiler the fused cases
skip and the fallback tests still run.
"""

from __future__ import annotations

import logging

import pytest
import torch

from resam_flower.aggregators import _fused, _order
from resam_flower.aggregators.bulyan import Bulyan
from resam_flower.aggregators.meamed import MeanAroundMedian, mean_around_median, mean_of_closest
from resam_flower.aggregators.median import CoordinateWiseMedian, coordinate_wise_median
from resam_flower.aggregators.trimmed_mean import CoordinateWiseTrimmedMean, coordinate_wise_trimmed_mean

HAVE_FUSED = _fused.enabled() != "off" and _fused.compiler() is not None
needs_fused = pytest.mark.skipif(not HAVE_FUSED, reason="no C compiler (or RESAM_FUSED=0): fallback only")
METHODS = ("fused", "network", "sort") if HAVE_FUSED else ("network", "sort")


# --- sort-based references (independent of _order): rank-order sums, 0.5 a + 0.5 b medians --------------
def ref_median(x: torch.Tensor) -> torch.Tensor:
    s, n = x.sort(dim=0).values, x.shape[0]
    return s[(n - 1) // 2].clone() if n % 2 else s[n // 2 - 1] * 0.5 + s[n // 2] * 0.5


def ref_trimmed(x: torch.Tensor, f: int) -> torch.Tensor:
    s, n = x.sort(dim=0).values, x.shape[0]
    acc = s[f].clone()
    for r in range(f + 1, n - f):
        acc = acc + s[r]
    return acc / (n - 2 * f)


def ref_closest(x: torch.Tensor, beta: int) -> torch.Tensor:
    """The window s_(L) .. s_(L+beta-1), L the first l < F with M - s_(l) <= s_(l+beta) - M (rounded; a NaN
    comparison counts as true), summed in rank order from s_(L)."""
    s, t = x.sort(dim=0).values, x.shape[0]
    big = t - beta
    med = s[(t - 1) // 2] if t % 2 else s[t // 2 - 1] * 0.5 + s[t // 2] * 0.5
    start = torch.full((x.shape[1],), big, dtype=torch.long)
    for lo in reversed(range(big)):
        stay = ~(((s[lo + beta] - med) - (med - s[lo])) < 0)
        start = torch.where(stay, lo, start)
    acc = s.gather(0, start.unsqueeze(0))[0]
    for j in range(1, beta):
        acc = acc + s.gather(0, (start + j).unsqueeze(0))[0]
    return acc / beta


def _values(kind: str, n: int, d: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    if kind == "ties":  # small integers and halves: many equal values, equal distances, exact sums
        return (torch.randint(-4, 5, (n, d), generator=g) / 2).to(dtype)
    if kind == "zeros":  # +0.0 and -0.0 mixed with a few other values
        x = torch.zeros(n, d, dtype=dtype)
        x[torch.rand(n, d, generator=g) < 0.5] = -0.0
        pick = torch.rand(n, d, generator=g) < 0.2
        x[pick] = torch.randn(int(pick.sum()), generator=g).to(dtype)
        return x
    scale = 10.0 ** torch.randint(-20, 21, (1, d), generator=g)  # columns of very different scales
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)


def _same(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape, what
    torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True, msg=what)  # -0.0 == 0.0


CASES = [  # (n, f for cwtm / meamed)
    (1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 1), (7, 3), (8, 2), (9, 4), (10, 2), (11, 3), (13, 4),
    (16, 5), (20, 4), (21, 6), (33, 10),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,f", CASES)
def test_rules_bit_identical_to_sort_references_on_every_path(n, f, dtype):
    g = torch.Generator().manual_seed(97 * n + f + (dtype == torch.float64))
    for kind in ("ties", "zeros", "scales"):
        d = int(torch.randint(1, 3000, (1,), generator=g))
        x = _values(kind, n, d, dtype, g)
        refs = {"cwmed": ref_median(x), "cwtm": ref_trimmed(x, f), "meamed": ref_closest(x, n - f)}
        for method in METHODS:
            _same(coordinate_wise_median(x, method=method), refs["cwmed"], f"cwmed {kind} {method} d={d}")
            _same(coordinate_wise_trimmed_mean(x, f, method=method), refs["cwtm"], f"cwtm {kind} {method}")
            _same(mean_around_median(x, f, method=method), refs["meamed"], f"meamed {kind} {method}")


@pytest.mark.parametrize("t", [3, 4, 7, 8, 12])
def test_closest_every_window_size_with_rows_in_place(t):
    """Bulyan's call: ``beta`` from 1 to t (also beta < t/2, where a rank can be both below F and
    above beta), on a subset of rows read in place, in any order, infinities included."""
    g = torch.Generator().manual_seed(t)
    x = _values("ties", t + 3, 2500, torch.float32, g)
    x[torch.rand(x.shape, generator=g) < 0.03] = float("inf")
    x[torch.rand(x.shape, generator=g) < 0.03] = float("-inf")
    rows = torch.randperm(t + 3, generator=g)[:t].tolist()
    keep = x.clone()
    for beta in range(1, t + 1):
        ref = ref_closest(x[rows], beta)
        for method in METHODS:
            _same(mean_of_closest(x, beta, rows=rows, method=method), ref, f"beta={beta} {method}")
    assert torch.equal(x, keep)


def _rule(name: str, x: torch.Tensor, f: int, method: str) -> torch.Tensor:
    if name == "cwmed":
        return coordinate_wise_median(x, method=method)
    if name == "cwtm":
        return coordinate_wise_trimmed_mean(x, f, method=method)
    return mean_around_median(x, f, method=method)


def test_random_shapes_paths_agree():
    """Many random (n, d, f, dtype): the fused kernel, the network and the sort give the same bits."""
    g = torch.Generator().manual_seed(123)
    for _ in range(12):
        n = int(torch.randint(1, 26, (1,), generator=g))
        f = int(torch.randint(0, (n - 1) // 2 + 1, (1,), generator=g))
        d = int(torch.randint(1, 5000, (1,), generator=g))
        dtype = (torch.float32, torch.float64)[int(torch.randint(0, 2, (1,), generator=g))]
        x = _values(("ties", "zeros", "scales")[int(torch.randint(0, 3, (1,), generator=g))], n, d, dtype, g)
        for rule in ("cwmed", "cwtm", "meamed"):
            outs = [_rule(rule, x, f, m) for m in METHODS]
            for o in outs[1:]:
                _same(o, outs[0], f"n={n} f={f} d={d} {dtype}")


def test_infinities_in_ranks_and_sums():
    inf = float("inf")
    x = torch.tensor([[inf, -inf, 1.0, inf], [inf, 0.0, 2.0, -inf], [inf, 5.0, -inf, 0.0],
                      [-inf, 7.0, 3.0, inf], [1.0, 8.0, inf, 2.0]])
    for method in METHODS:
        _same(coordinate_wise_median(x, method=method), ref_median(x), method)
        _same(coordinate_wise_trimmed_mean(x, 1, method=method), ref_trimmed(x, 1), method)
        _same(mean_around_median(x, 2, method=method), ref_closest(x, 3), method)


@needs_fused
def test_thread_count_and_chunking_do_not_change_results():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 3 * 8192 + 77, generator=g)  # several chunks per thread, one narrower
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append([coordinate_wise_median(x, method="fused"),
                         coordinate_wise_trimmed_mean(x, 4, method="fused"),
                         mean_around_median(x, 4, method="fused")])
    finally:
        torch.set_num_threads(threads)
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other, strict=True))
    _same(outs[0][0], ref_median(x), "cwmed")
    _same(outs[0][1], ref_trimmed(x, 4), "cwtm")
    _same(outs[0][2], ref_closest(x, 16), "meamed")


@needs_fused
def test_auto_builds_in_the_background_then_uses_the_kernel():
    x = torch.randn(9, _order.SMALL_D + 3)
    first = CoordinateWiseTrimmedMean(f=2)(x)  # may run on the network while the kernel is built
    _fused.wait()
    assert _fused.kernel(("trimmed", 2, 7), 9, torch.float32, mode="peek") is not None
    assert torch.equal(CoordinateWiseTrimmedMean(f=2)(x), first)
    _same(first, ref_trimmed(x, 2), "cwtm")


@needs_fused
def test_generated_source_has_no_fused_multiply_add_and_one_loop():
    src = _fused.source(("closest", 16), 20, torch.float32)
    assert src.count("for (") == 1 and "fma" not in src
    assert "-ffp-contract=off" in _fused._flags()


def test_fallback_without_compiler_is_logged_once_and_exact(monkeypatch, caplog, tmp_path):
    """No compiler (CC names a missing one): method="fused" runs the torch network, says so once."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("RESAM_FUSED_CACHE", str(tmp_path / "cache"))  # nothing cached to load
    monkeypatch.delenv(_fused.ENV, raising=False)
    _fused.reset()
    try:
        g = torch.Generator().manual_seed(11)
        x = _values("ties", 10, 3000, torch.float32, g)
        with caplog.at_level(logging.WARNING, logger="resam_flower.aggregators.fused"):
            for _ in range(3):
                _same(coordinate_wise_median(x, method="fused"), ref_median(x), "cwmed")
                _same(coordinate_wise_trimmed_mean(x, 2, method="fused"), ref_trimmed(x, 2), "cwtm")
                _same(MeanAroundMedian(f=2, method="fused")(x), ref_closest(x, 8), "meamed")
                _same(CoordinateWiseMedian()(x), ref_median(x), "auto")
        msgs = [r.getMessage() for r in caplog.records if "no C compiler" in r.getMessage()]
        assert len(msgs) == 1, caplog.text
        assert not _fused.available()
    finally:
        monkeypatch.undo()
        _fused.reset()


def test_failed_build_falls_back(monkeypatch, caplog, tmp_path):
    """A compiler that fails: logged once (with its message), the network's result."""
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'broken compiler' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("RESAM_FUSED_CACHE", str(tmp_path / "cache"))
    _fused.reset()
    try:
        x = torch.randn(7, 2000)
        with caplog.at_level(logging.WARNING, logger="resam_flower.aggregators.fused"):
            for _ in range(2):
                _same(coordinate_wise_median(x, method="fused"), ref_median(x), "cwmed")
        assert sum("broken compiler" in r.getMessage() for r in caplog.records) == 1
    finally:
        monkeypatch.undo()
        _fused.reset()


def test_disabled_by_environment(monkeypatch, caplog):
    monkeypatch.setenv(_fused.ENV, "0")
    _fused.reset()
    try:
        x = torch.randn(6, 1500)
        with caplog.at_level(logging.WARNING, logger="resam_flower.aggregators.fused"):
            _same(coordinate_wise_trimmed_mean(x, 1, method="fused"), ref_trimmed(x, 1), "cwtm")
        assert "RESAM_FUSED=0" in caplog.text
        assert not _fused.available()
    finally:
        monkeypatch.undo()
        _fused.reset()


@pytest.mark.parametrize("case", ["float16", "noncontiguous"])
def test_unsupported_inputs_fall_back(case, caplog):
    _fused.reset()
    g = torch.Generator().manual_seed(2)
    if case == "float16":
        x = torch.randint(-8, 9, (7, 1200), generator=g).to(torch.float16)
    else:
        x = torch.randn(1200, 7, generator=g).T  # columns not contiguous
    with caplog.at_level(logging.WARNING, logger="resam_flower.aggregators.fused"):
        for _ in range(2):
            _same(coordinate_wise_median(x, method="fused"), ref_median(x), case)
            _same(mean_around_median(x, 2, method="fused"), ref_closest(x, 5), case)
    assert len([r for r in caplog.records if "fused" in r.getMessage()]) == 1, caplog.text
    _fused.reset()


def test_bulyan_same_on_every_path():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(15, 2100, generator=g)
    x[:3] += 4
    agg = Bulyan(f=3)
    out = agg(x)
    rows = agg.last_info["selected"]
    for method in METHODS:
        _same(mean_of_closest(x, 15 - 12, rows=rows, method=method), out, method)
    _same(out, ref_closest(x[rows], 3), "reference")
