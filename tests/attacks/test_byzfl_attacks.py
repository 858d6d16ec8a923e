"""Differential tests of the attacks against ByzFL 0.0.11 (the RESAM authors' lab library), on its float64
numpy path.

ByzFL's attacks return *one* vector (every Byzantine worker sends it); ours return ``f`` rows. Conventions,
read from ``byzfl/attacks/attacks.py`` (format: ByzFL | resam_flower | what is compared):

* ALIE: ``mean + tau * sqrt(var(ddof=1))`` (plus sign, unbiased std) | ``mu + z * sigma``, sigma unbiased
  (``1/h`` when ``h = 1``, where ByzFL's ddof=1 gives NaN) | ``z = tau`` for several signs and sizes,
  h >= 2; presets ``"byzfl"`` (tau = 1.5) and ``"lab"`` (tau = -1.5).
* IPM: ``-tau * mean`` | ``-eps * mu`` | ``eps = tau``; preset ``"byzfl"`` (tau = 2.0).
* sign flipping: ``-mean`` | same | compared.
* inf: ``full_like(x[0], inf, dtype=float64)`` | ``+inf`` in the input's dtype | compared.
* mimic: ``x[epsilon]`` | ``x[target]`` | ``target = epsilon``.
* Gaussian: ``N(mu, sigma^2)`` per coordinate around a *fixed scalar* ``mu`` (default 0), numpy's global
  generator | ``N(honest mean, sigma^2 I)``, own seeded generator | same distribution when the honest
  mean is the constant vector ``mu * 1``: moments compared on such inputs, with tolerances from the
  sample size.
"""

from __future__ import annotations

import math

import byzfl
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resam_flower.attacks import build

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


def honest(seed: int, h: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(h, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)


def ours(name: str, f: int, x: np.ndarray, **params) -> np.ndarray:
    out = build(name, f, **params)(torch.from_numpy(x)).numpy()
    assert out.shape == (f, x.shape[1])
    return out


def same_rows(out: np.ndarray, ref, rtol: float = 1e-12) -> None:
    """Each of our ``f`` rows equals ByzFL's single vector."""
    ref = np.asarray(ref, dtype=np.float64)
    np.testing.assert_allclose(out, np.broadcast_to(ref, out.shape), rtol=rtol, atol=rtol)


@SETTINGS
@given(seed=st.integers(0, 2**20), h=st.integers(2, 9), f=st.integers(1, 4), d=st.integers(1, 6),
       z=st.sampled_from([-3.0, -1.5, -0.25, 0.0, 0.5, 1.5, 4.0]))  # fmt: skip
def test_alie_with_an_explicit_factor_matches_byzfl(seed, h, f, d, z):
    x = honest(seed, h, d)
    same_rows(ours("alie", f, x, z=z), byzfl.ALittleIsEnough(tau=z)(x.copy()))


@pytest.mark.parametrize(("preset", "tau"), [("byzfl", 1.5), ("lab", -1.5)])
def test_alie_presets_are_byzfl_factors(preset, tau):
    x = honest(7, 6, 5)
    same_rows(ours("alie", 2, x, z=preset), byzfl.ALittleIsEnough(tau=tau)(x.copy()))
    same_rows(ours("alie", 1, x, z="byzfl"), byzfl.ALittleIsEnough()(x.copy()))  # ByzFL's default tau


def test_alie_std_is_the_unbiased_one_as_byzfl():
    # Two honest values 0 and 2 per coordinate: unbiased std sqrt(2), biased 1. tau = 1 -> 1 + sqrt(2).
    x = np.array([[0.0, 0.0], [2.0, 2.0]])
    same_rows(ours("alie", 1, x, z=1.0), np.full(2, 1.0 + math.sqrt(2.0)))
    same_rows(ours("alie", 1, x, z=1.0), byzfl.ALittleIsEnough(tau=1.0)(x.copy()))


@SETTINGS
@given(seed=st.integers(0, 2**20), h=st.integers(1, 9), f=st.integers(1, 4), d=st.integers(1, 6),
       eps=st.sampled_from([-1.0, 0.1, 0.5, 1.1, 2.0, 10.0]))  # fmt: skip
def test_ipm_matches_byzfl(seed, h, f, d, eps):
    x = honest(seed, h, d)
    same_rows(ours("ipm", f, x, eps=eps), byzfl.InnerProductManipulation(tau=eps)(x.copy()))


def test_ipm_byzfl_preset_is_byzfl_default():
    x = honest(3, 5, 4)
    same_rows(ours("ipm", 2, x, eps="byzfl"), byzfl.InnerProductManipulation()(x.copy()))


@SETTINGS
@given(seed=st.integers(0, 2**20), h=st.integers(1, 9), f=st.integers(1, 4), d=st.integers(1, 6))
def test_sign_flipping_matches_byzfl(seed, h, f, d):
    x = honest(seed, h, d)
    same_rows(ours("sf", f, x), byzfl.SignFlipping()(x.copy()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inf_matches_byzfl(dtype):
    x = honest(1, 4, 6).astype(dtype)
    out = ours("inf", 3, x)
    ref = byzfl.Inf()(x.copy())
    assert out.dtype == dtype and ref.dtype == np.float64  # ByzFL always answers in float64
    assert np.array_equal(out, np.broadcast_to(ref.astype(dtype), out.shape))
    assert np.all(np.isposinf(out))


@SETTINGS
@given(seed=st.integers(0, 2**20), h=st.integers(1, 9), f=st.integers(1, 4), d=st.integers(1, 6),
       data=st.data())  # fmt: skip
def test_mimic_matches_byzfl(seed, h, f, d, data):
    target = data.draw(st.integers(0, h - 1))
    x = honest(seed, h, d)
    out = ours("mimic", f, x, target=target)
    ref = byzfl.Mimic(epsilon=target)(x.copy())
    assert np.array_equal(out, np.broadcast_to(ref, out.shape))  # a copy, bit for bit
    # ByzFL's parameter name is accepted as an alias
    assert np.array_equal(ours("mimic", f, x, epsilon=target), out)


# -- Gaussian: moments ------------------------------------------------------------------------------------
#: Draws per coordinate (ours: f rows of one call; ByzFL: one vector per call) and coordinates.
N, D = 4000, 6
#: Every check allows Z standard errors: a false alarm has probability < 2e-6 per check (normal tails),
#: and the draws are seeded, so the test is deterministic anyway.
Z = 5.0


def _moment_checks(samples: np.ndarray, mean: np.ndarray, sigma: float) -> None:
    """``samples`` (N, D) against N(mean, sigma^2 I): per coordinate and pooled mean, variance, skewness,
    kurtosis, and the correlation of coordinates. Standard errors for N i.i.d. normal draws:
    mean sigma/sqrt(N); sample variance sigma^2 sqrt(2/(N-1)); skewness sqrt(6/N); excess kurtosis
    sqrt(24/N); correlation 1/sqrt(N)."""
    n, d = samples.shape
    dev = samples - mean
    assert np.all(np.abs(dev.mean(0)) <= Z * sigma / math.sqrt(n))
    assert abs(dev.mean()) <= Z * sigma / math.sqrt(n * d)
    var = samples.var(0, ddof=1)
    assert np.all(np.abs(var - sigma**2) <= Z * sigma**2 * math.sqrt(2 / (n - 1)))
    pooled = dev.ravel()  # around the true mean: each term's variance is 2 sigma^4
    assert abs((pooled**2).mean() - sigma**2) <= Z * sigma**2 * math.sqrt(2 / (n * d))
    std = (pooled - pooled.mean()) / pooled.std()
    assert abs((std**3).mean()) <= Z * math.sqrt(6 / (n * d))
    assert abs((std**4).mean() - 3.0) <= Z * math.sqrt(24 / (n * d))
    corr = np.corrcoef(samples, rowvar=False)[np.triu_indices(d, 1)]
    assert np.all(np.abs(corr) <= Z / math.sqrt(n))


@pytest.fixture
def np_global_seed():
    """ByzFL draws from numpy's global generator: seed it, and restore its state afterwards."""
    state = np.random.get_state()
    np.random.seed(12345)
    yield
    np.random.set_state(state)


@pytest.mark.parametrize(("mu", "sigma"), [(0.0, 1.0), (2.5, 0.3), (-1.0, 4.0)])
def test_gaussian_moments_match_byzfl_around_a_constant_mean(np_global_seed, mu, sigma):
    # Honest rows whose mean is exactly mu in every coordinate: ByzFL's N(mu, sigma^2) per coordinate is
    # then the same distribution as ours, N(honest mean, sigma^2 I).
    x = np.full((4, D), mu) + np.array([[1.0], [-1.0], [0.5], [-0.5]]) * np.arange(1, D + 1)
    assert np.array_equal(x.mean(0), np.full(D, mu))
    attack = byzfl.Gaussian(mu=mu, sigma=sigma)
    theirs = np.stack([attack(x.copy()) for _ in range(N)])
    mine = ours("gaussian", N, x, sigma=sigma, seed=3)
    for samples in (theirs, mine):
        _moment_checks(samples, np.full(D, mu), sigma)
    # the two samples against each other: difference of means, ratio of variances (each of variance
    # sigma^2/N resp. about 2 sigma^4/N per coordinate, two independent samples)
    assert np.all(np.abs(mine.mean(0) - theirs.mean(0)) <= Z * sigma * math.sqrt(2 / N))
    gap = np.abs(mine.var(0, ddof=1) - theirs.var(0, ddof=1))
    assert np.all(gap <= Z * sigma**2 * math.sqrt(4 / (N - 1)))


def test_gaussian_is_centred_on_the_honest_mean_where_byzfl_uses_a_fixed_scalar():
    """The documented difference: with a non-constant honest mean ours follows it, ByzFL stays at mu."""
    x = honest(5, 6, D) * 10.0
    mine = ours("gaussian", N, x, sigma=0.5, seed=1)
    _moment_checks(mine, x.mean(0), 0.5)
    # successive calls draw new noise (reproducibly)
    attack = build("gaussian", 2, sigma=0.5, seed=1)
    a, b = attack(torch.from_numpy(x)), attack(torch.from_numpy(x))
    assert not torch.equal(a, b)
    attack.reset()
    assert torch.equal(attack(torch.from_numpy(x)), a)
