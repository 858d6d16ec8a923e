"""Properties every registered rule (and a few pipelines) must have, checked on small random inputs.

* output shape, dtype and device follow the input; the input is never written to;
* permutation invariance (up to rounding), except where the rule depends on input positions by design:
  ``monna`` averages around the input at position ``idx`` (a trusted reference), ``bucketing`` draws its
  buckets over positions with a seeded generator (fixed seed: same positions, other inputs);
* translation equivariance ``F(x + c) = F(x) + c``, except for rules that clip around the origin (``cc`` from
  a cold start, ``clipping``, ``arc``);
* robustness: with ``f`` Byzantine rows at +-1e6, at +inf, or at huge finite values, every robust rule's
  output lies in the honest rows' bounding box (``mean`` and cold-start ``cc`` are not robust in that sense);
  up to ``f`` non-finite rows never give a non-finite output; more than ``f`` raise NonFiniteInputError;
* the RESAM (f, kappa) inequality ``||F - mean_S|| <= kappa(n, f, d) * max_{i,j in S} ||x_i - x_j||`` for
  *every* S of size n - f, on random and adversarial inputs (Byzantine rows along the honest spread's
  principal direction, at the honest extremes, ALIE-like, then a small hill-climbing search), for every rule
  with a proven constant, written out in :data:`PROVEN` (``kappa()`` must state the same, others ``None``);
* CPU/CUDA parity through the ``device`` fixture, float32 against float64.

Every registered module is imported as it is: a module that does not import fails the suite (no skip).
"""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from resam_flower.aggregators import PRE_AGGREGATORS, RULES, NonFiniteInputError, build, resolve

PIPELINES = ["nnm+cwtm", "arc+krum", "bucketing(s=2)+cwmed", "clipping(c=5.0)+gm", "arc+nnm+multikrum"]
SPECS = sorted(RULES) + PIPELINES
#: Pipelines whose output must stay in the honest box when Byzantine rows are far: the clipping stages
#: (arc, clipping) bring far rows near, where only a kappa-type bound, not the box, applies to the rule.
BOX_PIPELINES = ["nnm+cwtm", "bucketing(s=2)+cwmed"]
#: Krum-type rules break exact ties by index; with k = n - f - 1 <= 2 neighbours ties are structural
#: (mutual nearest neighbours; identical rows out of NNM), so the invariance test gives them more inputs.
TIE_PRONE = {"krum", "multikrum"}
#: Bulyan's last Krum pick (3 inputs left when f = 1, k = 1) is always an exact tie, broken by index.
NOT_PERMUTATION_INVARIANT = {"monna", "bucketing"}
RANDOMISED = {"bucketing", "dnc"}
NOT_TRANSLATION_EQUIVARIANT = {"cc", "clipping", "arc"}
NOT_ROBUST = {"mean", "cc"}
#: Rules that only approximate a point inside the box (iterative / weighted): box widened by this many
#: honest diameters.
APPROX = {"gm": 1.0, "caf": 1.0}
FAST = settings(max_examples=10, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def stages(spec: str) -> list[str]:
    return [s.split("(")[0].strip() for s in spec.split("+")]


def make(spec: str, f: int):
    """Build ``spec`` with ``seed=0`` for seeded components."""
    seeded = {}
    for name in stages(spec):
        if "seed" in inspect.signature(resolve(name).__init__).parameters:
            seeded[name] = {"seed": 0}
    if "monna" in stages(spec):  # MoNNA needs its trusted input named: the first row here
        seeded["monna"] = {"idx": 0}
    return build(spec, f=f, **seeded)


def sizes(spec: str, f: int, extra: int) -> int:
    return make(spec, f).min_inputs(f) + extra


def sample(n: int, d: int, seed: int, dtype=torch.float64, device="cpu", scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)


def call(spec: str, f: int, x: torch.Tensor) -> torch.Tensor:
    """A fresh instance per call: stateful rules (cc) and seeded ones start from the same state."""
    return make(spec, f)(x)


def close(a: torch.Tensor, b: torch.Tensor, scale: float, rtol: float = 1e-9) -> None:
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=rtol, atol=rtol * max(scale, 1.0))


# -- shape, dtype, device, no writes -------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_follows_input_and_input_is_untouched(spec, dtype, device):
    f = 1
    x = sample(sizes(spec, f, 2), 5, 0, dtype, device)
    before = x.clone()
    out = call(spec, f, x)
    assert out.shape == (5,) and out.dtype == dtype and out.device.type == device.type
    assert torch.isfinite(out).all()
    assert torch.equal(x, before), f"{spec} wrote into its input"


@pytest.mark.parametrize("name", sorted(PRE_AGGREGATORS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pre_aggregator_output_shape(name, dtype, device):
    f = 2
    pre = make(f"{name}+mean", f).pre[0]
    n = pre.min_inputs(f) + 5
    x = sample(n, 4, 1, dtype, device, scale=3.0)
    before = x.clone()
    out = pre(x)
    assert tuple(out.shape) == (pre.output_shape(n, f)[0], 4)
    assert out.dtype == dtype and out.device.type == device.type
    assert torch.equal(x, before), f"{name} wrote into its input"


@pytest.mark.parametrize("name", ["nnm", "clipping", "arc"])
@FAST
@given(seed=st.integers(0, 2**16))
def test_pre_aggregator_permutation_equivariance(name, seed):
    f = 2
    pre = make(f"{name}+mean", f).pre[0]
    x = sample(pre.min_inputs(f) + 4, 3, seed, scale=3.0)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    close(pre(x[perm]), pre(x)[perm], 3.0)


@FAST
@given(seed=st.integers(0, 2**16), s=st.integers(1, 4), n=st.integers(1, 11))
def test_bucketing_averages_a_partition_of_the_inputs(seed, s, n):
    pre = make("bucketing+mean", 0).pre[0].__class__(f=0, s=s, seed=seed)
    x = sample(n, 3, seed)
    out = pre(x)
    buckets = pre.last_info["buckets"]
    assert sorted(i for b in buckets for i in b) == list(range(n))
    assert all(len(b) == s for b in buckets[:-1]) and 1 <= len(buckets[-1]) <= s
    for row, b in zip(out, buckets, strict=True):
        close(row, x[b].mean(0), 1.0)


# -- invariances ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [s for s in SPECS if not NOT_PERMUTATION_INVARIANT & set(stages(s))])
@FAST
@given(seed=st.integers(0, 2**16), f=st.integers(1, 2), extra=st.integers(0, 3), d=st.integers(1, 4))
def test_permutation_invariance(spec, seed, f, extra, d):
    assume(not (f == 1 and "bulyan" in stages(spec)))
    n = sizes(spec, f, extra)
    if TIE_PRONE & set(stages(spec)):
        n = max(n, f + 4)
    x = sample(n, d, seed, scale=2.0)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    close(call(spec, f, x[perm]), call(spec, f, x), 2.0, rtol=1e-7)


@pytest.mark.parametrize("spec", [s for s in SPECS if not NOT_TRANSLATION_EQUIVARIANT & set(stages(s))])
@FAST
@given(seed=st.integers(0, 2**16), f=st.integers(1, 2), shift=st.floats(-1e3, 1e3), d=st.integers(1, 4))
def test_translation_equivariance(spec, seed, f, shift, d):
    x = sample(sizes(spec, f, 1), d, seed)
    c = shift * sample(1, d, seed + 7)[0]
    close(call(spec, f, x + c), call(spec, f, x) + c, float(c.abs().max()), rtol=1e-7)


# -- robustness -----------------------------------------------------------------------------------------
def attacked(spec: str, f: int, d: int, seed: int, value: float, dtype=torch.float64):
    n = sizes(spec, f, 1)
    x = sample(n, d, seed, dtype)
    signs = torch.where(sample(f, d, seed + 3) > 0, 1.0, -1.0).to(dtype)
    x[n - f :] = value * (signs if value == 1e6 else 1.0)
    return x, x[: n - f]


def inside_box(out: torch.Tensor, honest: torch.Tensor, spec: str) -> None:
    h = honest.to(torch.float64)
    diam = float(torch.cdist(h, h).max())
    tol = 1e-6 * (1 + float(h.abs().max())) + APPROX.get(stages(spec)[-1], 0.0) * diam
    out = out.to(torch.float64)
    lo, hi = h.min(0).values - tol, h.max(0).values + tol
    assert torch.isfinite(out).all(), f"{spec} returned {out}"
    assert ((out >= lo) & (out <= hi)).all(), f"{spec}: {out} outside [{lo}, {hi}]"


ROBUST = [s for s in SPECS if not NOT_ROBUST & set(stages(s)) and ("+" not in s or s in BOX_PIPELINES)]


@pytest.mark.parametrize("spec", ROBUST)
@pytest.mark.parametrize("value", [1e6, -1e6, float("inf"), float("-inf")])
@pytest.mark.parametrize("f", [1, 2])
def test_far_byzantine_rows_stay_outside_the_output(spec, value, f):
    for seed in range(3):
        x, honest = attacked(spec, f, 3, seed, value)
        inside_box(call(spec, f, x), honest, spec)


@pytest.mark.parametrize("spec", ROBUST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_finite_byzantine_rows(spec, dtype):
    big = torch.finfo(dtype).max
    for value in (1e30, big / 4, -big):
        x, honest = attacked(spec, 2, 3, 0, float(value), dtype)
        inside_box(call(spec, 2, x), honest, spec)


@pytest.mark.parametrize("spec", SPECS)
@FAST
@given(seed=st.integers(0, 2**16), kind=st.sampled_from(["nan", "inf", "-inf", "one-nan"]),
       f=st.integers(1, 3))
def test_up_to_f_nonfinite_rows_are_dropped(spec, seed, kind, f):
    n = sizes(spec, f, 1)
    x = sample(n, 4, seed)
    rng = np.random.default_rng(seed)
    bad = rng.choice(n, size=int(rng.integers(1, min(f, n - 1) + 1)), replace=False)
    if kind == "one-nan":
        x[bad, int(rng.integers(0, 4))] = float("nan")
    else:
        x[bad] = float(kind)
    rule = make(spec, f)
    out = rule(x)
    assert torch.isfinite(out).all(), f"{spec} returned {out} with {len(bad)} {kind} rows"
    if spec in RULES:
        assert rule.last_info.get("nonfinite_rows") == len(bad)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_more_than_f_nonfinite_rows_raise(spec, kind):
    f = 2
    x = sample(max(sizes(spec, f, 1), 5), 4, 0)
    x[[0, 2, 3]] = float(kind)
    with pytest.raises(NonFiniteInputError, match="non-finite"):
        call(spec, f, x)


@pytest.mark.parametrize("spec", SPECS)
def test_all_rows_nonfinite_raise_even_within_f(spec):
    """n <= f non-finite rows leave nothing to aggregate: an error, never a NaN."""
    f = 3
    rule = make(spec, f)
    n = rule.min_inputs(f)
    if n > f:
        pytest.skip(f"{spec} needs n={n} > f={f}")
    x = torch.full((n, 4), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match="non-finite|no input|n=0"):
        rule(x)


# -- (f, kappa) resilient averaging ------------------------------------------------------------------------
def resam_ratio(out: np.ndarray, x: np.ndarray, f: int) -> float:
    """max over S, |S| = n - f, of ||out - mean_S|| / diam(S).

    The deviation is reduced by a rounding slack of ``1e-12 * max|x|`` (a subset of nearly equal rows,
    e.g. ``a`` and ``a + 1 ulp``, otherwise gives any ratio); a subset of equal rows with a deviation above
    the slack gives ``inf``.
    """
    n = x.shape[0]
    slack = 1e-12 * (1.0 + float(np.abs(x).max()))
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    worst = 0.0
    for s in itertools.combinations(range(n), n - f):
        idx = np.asarray(s)
        dev = max(float(np.linalg.norm(out - x[idx].mean(0))) - slack, 0.0)
        diam = float(dist[np.ix_(idx, idx)].max())
        worst = max(worst, dev / diam if diam > 0 else (np.inf if dev > 0 else 0.0))
    return worst


def honest_rows(kind: str, m: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gauss":
        return rng.normal(size=(m, d))
    if kind == "aniso":
        return rng.normal(size=(m, d)) * np.geomspace(10.0, 0.1, d)
    if kind == "clusters":
        return np.where(np.arange(m)[:, None] % 2 == 0, 5.0, -5.0) + 0.1 * rng.normal(size=(m, d))
    return rng.normal(size=(m, 1)) * rng.normal(size=(1, d)) + 3.0  # "line": rank one, off the origin


def byzantine_candidates(h: np.ndarray, f: int) -> list[np.ndarray]:
    mu, d = h.mean(0), h.shape[1]
    diam = max(float(np.sqrt(((h[:, None] - h[None]) ** 2).sum(-1)).max()), 1e-12)
    u = np.linalg.svd(h - mu)[2][0] if d > 1 else np.ones(1)
    proj = (h - mu) @ u
    far, sd = h[np.argmax(proj)], h.std(0)
    rep = lambda v: np.repeat(v[None, :], f, axis=0)  # noqa: E731
    cands = [rep(mu + s * t * diam * u) for t in (0.25, 0.5, 1, 2, 4, 16, 1e3) for s in (1, -1)]
    cands += [rep(far), rep(far + 0.5 * (far - mu)), rep(h[np.argmin(proj)])]
    cands += [rep(mu + z * sd) for z in (-3, -1.5, -1, -0.5, 0.5, 1, 1.5, 3)]
    cands += [mu + diam * np.linspace(0.5, 2.0, f)[:, None] * u]
    return cands


def worst_case(spec: str, f: int, h: np.ndarray, rng: np.random.Generator, steps: int = 30) -> float:
    def ratio(b: np.ndarray) -> float:
        x = np.concatenate([h, b])
        return resam_ratio(call(spec, f, torch.from_numpy(x)).numpy(), x, f)

    scored = sorted(((ratio(b), i, b) for i, b in enumerate(byzantine_candidates(h, f))), key=lambda t: -t[0])
    best = scored[0][0]
    diam = max(float(np.sqrt(((h[:, None] - h[None]) ** 2).sum(-1)).max()), 1e-12)
    for r0, _, b in scored[:2]:  # hill climbing from the two most damaging placements
        cur = r0
        for step in np.geomspace(1.0, 0.01, steps):
            cand = b + step * diam * rng.normal(size=b.shape)
            r = ratio(cand)
            if r > cur:
                cur, b = r, cand
        best = max(best, cur)
    return best


def _dim(n: int, f: int, d: int) -> float:
    """``sqrt(min(d, n - f - 1))``: a per-coordinate constant times this bounds the vector deviation, since
    ``Σ_k Δ_k² <= min(d, m - 1) D²`` (each range ``Δ_k <= D``; ``Δ_k² <= 2 Σ_i (x_ik - x̄_k)²`` and
    ``Σ_i ||x_i - x̄||² <= (m - 1) D² / 2``)."""
    return math.sqrt(min(d, n - f - 1))


#: Proven (f, kappa) constants in RESAM's diameter definition (n > 2f, m = n - f), written out here, not
#: read from the rules. Coordinate-wise rules: per-coordinate constant times ``_dim``: trimmed mean ``f/m``
#: (Farhadkhani et al., 2022; tight in 1-d, the lower bound of every rule), median ``⌊(n-1)/2⌋/m``, mean
#: around median ``2f/m`` (proofs in the rules' ``kappa`` docstrings). MDA ``2f/m`` (RESAM). SMEA
#: ``sqrt(f/(n-2f))`` (spectral argument of Allouah et al., 2024, plus Popoviciu's inequality).
PROVEN = {
    "cwtm": lambda n, f, d: f / (n - f) * _dim(n, f, d),
    "cwmed": lambda n, f, d: ((n - 1) // 2) / (n - f) * _dim(n, f, d),
    "meamed": lambda n, f, d: 2 * f / (n - f) * _dim(n, f, d),
    "mda": lambda n, f, d: 2 * f / (n - f),
    "smea": lambda n, f, d: math.sqrt(f / (n - 2 * f)),
}
KAPPA_SPECS = sorted(PROVEN)


@pytest.mark.parametrize("spec", sorted(RULES))
def test_kappa_states_the_proven_constant_or_none(spec):
    for n, f, d in [(3, 1, 1), (7, 2, 1), (7, 2, 3), (11, 3, 50), (20, 4, 2), (6, 0, 4)]:
        kappa = make(spec, f).kappa(n, f, d)
        if spec in PROVEN:
            assert kappa == pytest.approx(PROVEN[spec](n, f, d), rel=1e-12), (spec, n, f, d)
        elif spec == "mean":
            assert kappa == (0.0 if f == 0 else None)
        else:
            assert kappa is None, f"{spec} claims kappa={kappa}: add its proven constant to PROVEN"
    for spec_f in (1, 2):
        if spec in PROVEN:  # n <= 2f: no constant
            assert make(spec, spec_f).kappa(2 * spec_f, spec_f, 2) is None


@pytest.mark.parametrize("spec", KAPPA_SPECS)
@FAST
@given(seed=st.integers(0, 2**16), f=st.integers(1, 2), extra=st.integers(0, 2), d=st.integers(1, 4),
       byz_scale=st.sampled_from([0.1, 1.0, 10.0, 1e4]))
def test_resam_inequality_on_random_inputs(spec, seed, f, extra, d, byz_scale):
    n = sizes(spec, f, extra)
    kappa = PROVEN[spec](n, f, d)
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n - f, d)), byz_scale * rng.normal(size=(f, d))])
    ratio = resam_ratio(call(spec, f, torch.from_numpy(x)).numpy(), x, f)
    assert ratio <= kappa * (1 + 1e-9) + 1e-12, f"{spec}: ratio {ratio} > kappa {kappa} (n={n}, f={f}, d={d})"


@pytest.mark.parametrize("spec", KAPPA_SPECS)
@pytest.mark.parametrize("honest", ["gauss", "aniso", "clusters", "line"])
@pytest.mark.parametrize(("f", "d"), [(1, 1), (1, 3), (2, 2), (2, 5)])
def test_resam_inequality_against_adversarial_rows(spec, honest, f, d):
    n = sizes(spec, f, 0)
    kappa = PROVEN[spec](n, f, d)
    rng = np.random.default_rng(1000 * f + d)
    ratio = worst_case(spec, f, honest_rows(honest, n - f, d, rng), rng)
    assert ratio <= kappa * (1 + 1e-9) + 1e-12, f"{spec}: ratio {ratio} > kappa {kappa} (n={n}, f={f}, d={d})"


@pytest.mark.parametrize("spec", ROBUST)
@pytest.mark.parametrize("f", [1, 2])
def test_identical_honest_rows_are_returned(spec, f):
    """kappa finite means: n - f equal inputs fix the output, whatever the f others are."""
    n = sizes(spec, f, 1)
    x = sample(n, 3, f)
    x[: n - f] = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    x[n - f :] = 50.0 * sample(f, 3, 9)
    tol = 1e-6 if stages(spec)[-1] in APPROX else 1e-9
    close(call(spec, f, x), x[0], 2.0, rtol=tol)


# -- devices and dtypes ---------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("spec", [s for s in SPECS if not RANDOMISED & set(stages(s))])
def test_device_parity(spec):
    """CUDA against CPU (skipped without a GPU; the randomised rules draw their randomness on the device,
    where CPU and CUDA streams differ)."""
    f = 2
    x = sample(sizes(spec, f, 2), 6, 5, scale=2.0)
    out = call(spec, f, x.to("cuda"))
    assert out.device.type == "cuda"
    close(out, call(spec, f, x), 2.0, rtol=1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_float32_agrees_with_float64(spec, device):
    f = 2
    x = sample(sizes(spec, f, 2), 6, 11, scale=2.0) + 100.0  # far from the origin: cancellation-prone
    out32 = call(spec, f, x.to(device=device, dtype=torch.float32))
    close(out32.to(torch.float64), call(spec, f, x), 100.0, rtol=1e-5)
