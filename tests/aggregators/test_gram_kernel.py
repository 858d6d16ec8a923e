"""The fused symmetric Gram kernel (``_gram``) against float64 references, its determinism over threads,
its use by the distance rules (``_linalg.pairwise_sq_distances``) and the matmul fallback.

References are independent of the kernel: ``(x.double() @ x.double().T)`` of the (centred) rows, whose own
error (float64) is negligible next to the float32 bounds checked here.
"""

from __future__ import annotations

import ctypes
import logging
import math

import pytest
import torch

from resam_flower.aggregators import _fused, _gram, _linalg
from resam_flower.aggregators.krum import Krum

HAVE_FUSED = _fused.enabled() != "off" and _fused.compiler() is not None and _gram._shape() is not None
needs_fused = pytest.mark.skipif(
    not HAVE_FUSED, reason="no C compiler, RESAM_FUSED=0 or no AVX2/AVX-512 (x86-64): matmul fallback only"
)


def _reference(x: torch.Tensor, ref: int | None) -> torch.Tensor:
    y = x.double() if ref is None else x.double() - x[ref].double()
    return y @ y.T


def _bound(x: torch.Tensor, ref: int | None) -> torch.Tensor:
    """The error :mod:`._linalg`'s guard assumes, ``sqrt(d) eps ||x_i|| ||x_j||`` (rows centred at ref),
    plus ``2 eps`` for the roundings of the centring and the products that dominate at tiny ``d``."""
    r = _reference(x, ref).diagonal().sqrt()
    return (math.sqrt(x.shape[1]) + 2) * torch.finfo(x.dtype).eps * r[:, None] * r[None, :]


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 20, 51, 64])
@pytest.mark.parametrize("d", [1, 7, 1000, 2 * _gram.BLOCK + 4099])
def test_gram_within_the_guards_bound_centred_or_not(dtype, n, d):
    g = torch.Generator().manual_seed(n * 1000 + d)
    x = (torch.randn(n, d, generator=g) + 3.0).to(dtype)  # off-centre: the norms dominate
    for ref in (None, n // 2):
        out = _gram.gram(x, ref)
        assert out is not None and out.dtype == torch.float64 and out.shape == (n, n)
        err = (out - _reference(x, ref)).abs()
        assert bool((err <= _bound(x, ref) + 1e-300).all()), (ref, float((err / _bound(x, ref)).max()))
        assert torch.equal(out, out.T)


@needs_fused
def test_gram_more_accurate_than_the_matmul():
    """Partial sums go into float64 every FLUSH columns: the error is far below a float32 matmul's."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 300_000, generator=g) + 1.0
    exact = _reference(x, None)
    fused = (_gram.gram(x) - exact).abs().mean()
    matmul = ((x @ x.T).double() - exact).abs().mean()
    assert fused < 0.25 * matmul, (float(fused), float(matmul))


@needs_fused
def test_gram_same_bits_for_any_number_of_threads_and_row_strides():
    g = torch.Generator().manual_seed(8)
    blocks = 9
    big = torch.randn(2 * 11, blocks * _gram.BLOCK + 777, generator=g)
    # blocks of very different scales, so that the order of the partial sums shows in the bits
    scale = 10.0 ** torch.randint(0, 7, (blocks + 1,), generator=g).repeat_interleave(_gram.BLOCK)
    big *= scale[: big.shape[1]]
    x = big[::2]  # rows 2 apart: stride(0) != d, columns contiguous
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _gram.gram(x, 3)
        torch.set_num_threads(2)
        two = _gram.gram(x, 3)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert torch.equal(one, _gram.gram(x.contiguous(), 3))


@needs_fused
def test_distance_rules_use_the_fused_gram():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(12, 5000, generator=g)
    p = _linalg.pairwise_sq_distances(x, 3, "krum")
    assert p.method == "fast"
    assert torch.equal(p.d2, _linalg.sq_distances(_gram.gram(x)))
    assert torch.equal(_linalg.gram(x), _gram.gram(x))


@needs_fused
def test_centred_recompute_uses_the_fused_gram():
    """Close rows far from the origin: the guard recomputes the Gram centred at a central row, fused."""
    g = torch.Generator().manual_seed(10)
    x = 1000.0 + 1e-3 * torch.randn(9, 4000, generator=g)
    p = _linalg.pairwise_sq_distances(x, 2, "krum")
    assert p.method == "centred" and p.ref is not None
    assert torch.equal(p.gram, _gram.gram(x, p.ref))
    exact = _reference(x, p.ref)
    assert bool(((p.gram - exact).abs() <= _bound(x, p.ref)).all())


@pytest.mark.parametrize("huge", [1e20, 1e18])
def test_a_row_whose_squared_norm_overflows_is_dropped_on_every_path(huge, monkeypatch):
    """1e20: the square overflows float32; 1e18: only the sum does (4000 x 1e36 > 3.4e38), which the
    fused kernel's float64 partial sums would not show: both count as non-finite rows."""
    for switch in ("auto", "0"):
        monkeypatch.setenv(_fused.ENV, switch)
        x = torch.randn(7, 4000)
        x[2] = huge
        p = _linalg.pairwise_sq_distances(x, 1, "krum")
        assert p.dropped == 1 and p.kept.tolist() == [0, 1, 3, 4, 5, 6], switch


def test_half_precision_rows_with_large_norms_are_kept():
    """float16 rows go through the float64 blocked Gram: a squared norm above float16's range (65504) is
    not an overflow there, the row is finite and kept."""
    x = torch.full((6, 2000), 10.0, dtype=torch.float16)  # squared norms 2e5
    x[1] = 9.0
    p = _linalg.pairwise_sq_distances(x, 1, "krum")
    assert p.dropped == 0 and p.method == "exact"
    assert float(p.d2[0, 1]) == pytest.approx(2000 * 1.0)


@pytest.mark.parametrize("case", ["disabled", "too many rows", "columns not contiguous", "float16"])
def test_fallback_to_the_matmul(case, monkeypatch, caplog):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3000, generator=g)
    if case == "disabled":
        monkeypatch.setenv(_fused.ENV, "0")
    elif case == "too many rows":
        x = torch.randn(_gram.MAX_N + 1, 300, generator=g)
    elif case == "columns not contiguous":
        x = torch.randn(3000, 7, generator=g).T
    else:
        x = x.to(torch.float16)
    _fused.reset()
    with caplog.at_level(logging.WARNING, logger="resam_flower.aggregators.fused"):
        assert _gram.gram(x) is None
        if x.dtype == torch.float32:
            assert torch.equal(_linalg.gram(x), (x @ x.T).double())
    quiet = case == "too many rows" or _gram._shape() is None  # intended paths: nothing to warn about
    assert ("fused Gram kernel does not run" in caplog.text) != quiet, caplog.text
    _fused.reset()


def test_fallback_without_compiler_gives_krum_the_matmul_result(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("RESAM_FUSED_CACHE", str(tmp_path / "cache"))
    _fused.reset()
    try:
        g = torch.Generator().manual_seed(6)
        x = torch.randn(10, 2000, generator=g)
        x[:2] += 5.0
        assert _gram.gram(x) is None
        p = _linalg.pairwise_sq_distances(x, 2, "krum")
        assert torch.equal(p.d2, _linalg.sq_distances((x @ x.T).double()))
        out = Krum(f=2)(x)
        d2 = _linalg.sq_distances(_reference(x, None))
        scores = d2.sort(dim=1).values[:, 1 : 10 - 2 - 1].sum(1)  # n - f - 2 nearest, self excluded
        assert torch.equal(out, x[int(scores.argmin())])
    finally:
        monkeypatch.undo()
        _fused.reset()


@needs_fused
@pytest.mark.parametrize("isa", sorted(_gram.SHAPES))
def test_source_compiles_on_every_supported_shape(isa):
    """The tile shape of each instruction set served builds and is right (here: built for this CPU)."""
    vb, t = _gram.SHAPES[isa]
    for n in (1, 4, 11):
        src = _gram.source(n, torch.float32, vector_bytes=vb, tile=t)
        fn = _fused.compile_source(src, f"test Gram {vb}/{t}", _gram._ARGTYPES, ("-ffp-contract=fast",))
        assert fn is not None
        x = torch.randn(n, 3001)
        ptrs = (ctypes.c_void_p * n)(*[x[i].data_ptr() for i in range(n)])
        out = torch.empty(n, n, dtype=torch.float64)
        fn(ptrs, None, out.data_ptr(), 0, 3001)
        assert bool(((out - _reference(x, None)).abs() <= _bound(x, None)).all()), (isa, n)


def test_other_instruction_sets_use_the_matmul_quietly(monkeypatch, caplog):
    """SSE2-only x86 (or torch told to dispatch lower) and other architectures: the matmul, no warning."""
    monkeypatch.setattr(_fused, "capability", lambda: "DEFAULT")
    _fused.reset()
    x = torch.randn(9, 2500)
    with caplog.at_level(logging.WARNING, logger="resam_flower.aggregators.fused"):
        assert _gram.gram(x) is None
        p = _linalg.pairwise_sq_distances(x, 2, "krum")
    assert torch.equal(p.d2, _linalg.sq_distances((x @ x.T).double()))
    assert "fused Gram" not in caplog.text
    _fused.reset()
