"""Bulyan: hand-worked example, an independent loop-based reference, invariances, faulty rows."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError, build
from resam_flower.aggregators.bulyan import Bulyan, mean_around_median


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(x: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan written with plain loops: iterated Krum (k = m - f - 1), then per coordinate the beta
    values closest to the median (found by sorting the deviations)."""
    rows = [r.double() for r in x]
    remaining = list(range(len(rows)))
    theta = len(rows) - 2 * f
    chosen = []
    for _ in range(theta):
        m = len(remaining)
        k = m - f - 1
        scores = []
        for i in remaining:
            d = sorted(float(((rows[i] - rows[j]) ** 2).sum()) for j in remaining if j != i)
            scores.append(sum(d[:k]))
        best = remaining[scores.index(min(scores))]
        chosen.append(best)
        remaining.remove(best)
    beta = theta - 2 * f
    out = []
    for c in range(x.shape[1]):
        vals = sorted(float(rows[i][c]) for i in chosen)
        t = len(vals)
        med = vals[t // 2] if t % 2 else (vals[t // 2 - 1] + vals[t // 2]) / 2
        closest = sorted(vals, key=lambda v: abs(v - med))[:beta]
        out.append(sum(closest) / beta)
    return torch.tensor(out, dtype=torch.float64)


def test_hand_worked_example():
    # n = 7, f = 1: theta = 5, beta = 3. Iterated Krum picks 4, 3, 2, 1, then 0 (a three-way tie at the
    # last step, lowest index); the median of {0..4} is 2 and the 3 closest values 1, 2, 3 average to 2.
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [100.0], [-100.0]], dtype=torch.float64)
    agg = Bulyan(f=1)
    assert agg(x).item() == 2.0
    assert agg.last_info["selected"] == [4, 3, 2, 1, 0]


def test_mean_around_median_windows():
    v = torch.tensor([[0.0, 5.0], [1.0, -1.0], [10.0, 0.0], [2.0, 0.5], [3.0, 100.0]])
    # column 0: median 2, closest three 1, 2, 3
    # column 1: median 0.5, deviations 4.5, 1.5, 0.5, 0, 99.5 -> closest three 0.5, 0, -1
    out = mean_around_median(v, 3)
    assert torch.allclose(out, torch.tensor([2.0, (0.0 + 0.5 - 1.0) / 3]))
    even = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # median 1.5: closest two are 1 and 2
    assert mean_around_median(even, 2).item() == 1.5


@pytest.mark.parametrize("seed", range(5))
def test_matches_loop_reference(seed):
    g = _gen(seed)
    f = 1 + seed % 2
    n = 4 * f + 3 + seed % 3
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x[:f] += torch.randn(f, 6, generator=g, dtype=torch.float64) * 3
    assert torch.allclose(Bulyan(f)(x), _reference(x, f))


def test_column_blocks_cover_every_coordinate():
    x = torch.randn(7, 70_000, generator=_gen(8))
    agg = Bulyan(f=1)
    out = agg(x)
    sel = agg.last_info["selected"]
    assert torch.allclose(out, mean_around_median(x[sel], 3))


def test_translation_equivariance_and_permutation_invariance():
    x = torch.randn(11, 10, generator=_gen(1), dtype=torch.float64)
    agg = Bulyan(f=2)
    out = agg(x)
    shift = 1e3 * torch.randn(10, generator=_gen(2), dtype=torch.float64)
    assert torch.allclose(agg(x + shift), out + shift, atol=1e-9)
    assert torch.allclose(agg(x[torch.randperm(11, generator=_gen(3))]), out)


@pytest.mark.parametrize("bad", [1e6, -1e6, float("inf")])
def test_outliers_stay_out(bad):
    n, f = 11, 2
    honest = torch.rand(n - f, 20, generator=_gen(4))
    byz = torch.full((f, 20), bad)
    if bad != float("inf"):
        byz[0] *= -1
    out = Bulyan(f=f)(torch.cat([byz, honest]))
    assert torch.all(out >= honest.min(0).values) and torch.all(out <= honest.max(0).values)


def test_nan_rows_dropped_up_to_f():
    x = torch.randn(11, 5, generator=_gen(5), dtype=torch.float64)
    y = x.clone()
    y[3, 1] = float("nan")
    agg = Bulyan(f=2)
    keep = [i for i in range(11) if i != 3]
    assert torch.allclose(agg(y), _reference(x[keep], 1))
    assert agg.last_info["nonfinite_rows"] == 1 and 3 not in agg.last_info["selected"]
    y[[4, 5], 0] = float("inf")
    with pytest.raises(NonFiniteInputError):
        agg(y)


def test_too_few_inputs_raise():
    with pytest.raises(ValueError, match=r"n >= 4f \+ 3.*f=2.*n=10"):
        Bulyan(f=2)(torch.zeros(10, 3))
    assert build("bulyan", f=1).min_inputs() == 7


def test_f_zero_is_the_mean():
    x = torch.randn(4, 3, generator=_gen(6), dtype=torch.float64)
    assert torch.allclose(Bulyan(f=0)(x), x.mean(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(dtype, device):
    x = torch.randn(9, 40, generator=_gen(7), dtype=dtype).to(device)
    out = Bulyan(f=1)(x)
    assert out.dtype == dtype and out.device == x.device
    assert torch.allclose(out.double().cpu(), _reference(x.cpu(), 1), atol=1e-5)
