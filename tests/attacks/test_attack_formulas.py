"""Each attack's output against its formula, on small hand-made inputs."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from resam_flower.attacks import build, classic_z, karimireddy_z
from resam_flower.attacks.ipm import eps_from_lab_factor

# mu = [3, 4, 5]; unbiased coordinate-wise std = [2, 2, 2]
H = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [5.0, 6.0, 7.0]], dtype=torch.float64)


def rows(v, f):
    return torch.tensor([v] * f, dtype=torch.float64)


def test_sign_flipping():
    torch.testing.assert_close(build("sf", 2)(H), rows([-3.0, -4.0, -5.0], 2))


def test_ipm_default_and_given_eps():
    torch.testing.assert_close(build("ipm", 2)(H), rows([-0.3, -0.4, -0.5], 2))
    torch.testing.assert_close(build("ipm", 1, eps=0.5)(H), rows([-1.5, -2.0, -2.5], 1))
    torch.testing.assert_close(build("foe", 1, tau=2.0)(H), rows([-6.0, -8.0, -10.0], 1))


def test_alie_given_z_uses_unbiased_std():
    torch.testing.assert_close(build("alie", 2, z=1.5)(H), rows([6.0, 7.0, 8.0], 2))
    torch.testing.assert_close(build("alie", 1, z=-1.0)(H), rows([1.0, 2.0, 3.0], 1))


def _phi_inv(p: float) -> float:
    return NormalDist().inv_cdf(p)


def test_classic_z_is_baruch_et_al_published_formula():
    # Baruch et al. (NeurIPS 2019): s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n), written out here.
    # n=13, f=3: s = 7 - 3 = 4, z = Phi^-1(9/13) = 0.5024
    assert classic_z(13, 3) == pytest.approx(_phi_inv(9 / 13), abs=1e-12)
    assert classic_z(13, 3) == pytest.approx(0.502402, abs=1e-6)
    # n=11, f=1: s = 6 - 1 = 5, z = Phi^-1(6/11) = 0.1142 (the variant gives 0 here)
    assert classic_z(11, 1) == pytest.approx(_phi_inv(6 / 11), abs=1e-12)
    assert classic_z(11, 1) == pytest.approx(0.114185, abs=1e-6)
    # n=25, f=5: s = 13 - 5 = 8, z = Phi^-1(17/25)
    assert classic_z(25, 5) == pytest.approx(_phi_inv(17 / 25), abs=1e-12)
    # n=4, f=1: s = 2, z = Phi^-1(2/4) = 0
    assert classic_z(4, 1) == pytest.approx(0.0, abs=1e-12)
    for n, f in [(3, 2), (2, 2), (10, 6)]:
        with pytest.raises(ValueError, match=f"classic ALIE z .*n={n}, f={f}"):
            classic_z(n, f)


def test_karimireddy_variant_is_the_weaker_formula_under_its_own_name():
    # Phi^-1((n - f - s) / (n - f)), same s.
    # n=13, f=3: s = 4, (13 - 3 - 4)/(13 - 3) = 0.6 -> 0.2533
    assert karimireddy_z(13, 3) == pytest.approx(_phi_inv(0.6), abs=1e-12)
    assert karimireddy_z(13, 3) == pytest.approx(0.253347, abs=1e-6)
    # n=11, f=1: s = 5, (11 - 1 - 5)/(11 - 1) = 1/2 -> exactly 0: the forged vector is the honest mean
    assert karimireddy_z(11, 1) == 0.0
    assert karimireddy_z(4, 1) == pytest.approx(_phi_inv(1 / 3), abs=1e-12)  # s = 2, cdf 1/3
    assert karimireddy_z(13, 3) < classic_z(13, 3)
    with pytest.raises(ValueError, match="karimireddy ALIE z .*n=3, f=2"):
        karimireddy_z(3, 2)


def test_alie_default_z_is_classic_for_n_equal_h_plus_f():
    honest = torch.arange(30, dtype=torch.float64).reshape(10, 3) ** 1.5
    attack = build("alie", 3)
    out = attack(honest)
    z13 = _phi_inv(9 / 13)  # n = 13, f = 3
    torch.testing.assert_close(out, (honest.mean(0) + z13 * honest.std(0)).expand(3, 3))
    assert attack.last_info["z"] == pytest.approx(z13, abs=1e-12)
    # a round with only 2 Byzantine replies: n = 12, s = 7 - 2 = 5, z = Phi^-1(7/12)
    z12 = _phi_inv(7 / 12)
    torch.testing.assert_close(attack(honest, f=2), (honest.mean(0) + z12 * honest.std(0)).expand(2, 3))


@pytest.mark.parametrize(
    ("z", "expected"),
    [("karimireddy", lambda: _phi_inv(0.6)), ("lab", lambda: -1.5), ("byzfl", lambda: 1.5),
     ("classic", lambda: _phi_inv(9 / 13)), (0.7, lambda: 0.7)],
)
def test_alie_named_factors(z, expected):
    honest = torch.arange(30, dtype=torch.float64).reshape(10, 3) ** 1.5
    attack = build("alie", 3, z=z)
    out = attack(honest)
    torch.testing.assert_close(out, (honest.mean(0) + expected() * honest.std(0)).expand(3, 3))
    assert build(attack.spec, 3).spec == attack.spec


def test_alie_lab_factor_is_mu_minus_one_and_a_half_sigma():
    # LPD-EPFL/ByzantineMomentum: attack "little", factor 1.5, negative -> mu - 1.5 * sigma (sigma unbiased)
    torch.testing.assert_close(build("alie", 2, z="lab")(H), rows([3.0 - 3.0, 4.0 - 3.0, 5.0 - 3.0], 2))
    with pytest.raises(ValueError, match="z must be a number or one of classic, karimireddy, lab, byzfl"):
        build("alie", 2, z="baruch")


def test_foe_lab_factor_is_eps_one_tenth():
    # LPD-EPFL/ByzantineMomentum: attack "empire" (attacks/identical.py), factor 1.1:
    # mu + 1.1 * (-mu) = -0.1 mu, i.e. eps = 0.1 in -eps * mu
    mu = H.mean(0)
    lab = mu + 1.1 * (-mu)
    torch.testing.assert_close(build("foe", 2, eps="lab")(H), lab.expand(2, 3))
    assert eps_from_lab_factor(1.1) == pytest.approx(0.1, abs=1e-15)
    torch.testing.assert_close(build("foe", 1, eps="byzfl")(H), (-2.0 * mu).expand(1, 3))
    assert build("foe", 1, eps="lab").spec == "ipm(eps='lab')"
    with pytest.raises(ValueError, match="eps must be a number or one of classic, lab, byzfl"):
        build("foe", 1, eps="strong")


def test_mimic_index():
    torch.testing.assert_close(build("mimic", 2)(H), rows([1.0, 2.0, 3.0], 2))
    torch.testing.assert_close(build("mimic", 1, target=2)(H), rows([5.0, 6.0, 7.0], 1))
    with pytest.raises(ValueError, match="target=3 with h=3"):
        build("mimic", 1, target=3)(H)


def test_mimic_max_variance_picks_the_extreme_worker_along_the_top_direction():
    # Mean (0, 0.7). Scatter along x: 16.08, along y: 9.8, no cross term: the top direction is x.
    # Worker 1 is farthest along x (2.2); worker 4 is farthest in norm (2.8) but on the minor axis.
    honest = torch.tensor([[-2.0, 0.0], [2.2, 0.0], [-2.0, 0.0], [1.8, 0.0], [0.0, 3.5]])
    attack = build("mimic", 2, target="max_variance")
    torch.testing.assert_close(attack(honest), honest[1].expand(2, 2))
    assert attack.last_info["target"] == 1
    # Rotated and translated: the choice follows the principal direction, not a coordinate.
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    attack(honest @ rot + 5.0)
    assert attack.last_info["target"] == 1


def test_inf():
    out = build("inf", 2)(H)
    assert out.shape == (2, 3) and torch.isposinf(out).all()
    assert build("inf", 1)(torch.empty((0, 4))).shape == (1, 4)  # needs only d


def test_gaussian_statistics_and_independent_rows():
    mu = torch.linspace(-1.0, 1.0, 20_000, dtype=torch.float64)
    honest = torch.stack([mu - 1.0, mu + 1.0])  # mean mu
    out = build("gaussian", 3, sigma=2.0, seed=5)(honest)
    noise = out - mu
    assert noise.mean().abs() < 0.05
    assert noise.std().item() == pytest.approx(2.0, rel=0.03)
    assert not torch.equal(out[0], out[1])


def test_gaussian_zero_sigma_is_the_mean():
    torch.testing.assert_close(build("gaussian", 2, sigma=0.0)(H), rows([3.0, 4.0, 5.0], 2))


def test_minmax_minsum_hand_example():
    # 1-D: honest 0, 0, 3 (mu = 1). Unit perturbation p = -1; b = 1 - gamma.
    # MinMax: max_i (b - x_i)^2 <= 9 (max pairwise)          -> gamma = 1, b = 0
    # MinSum: 2 (1 - g)^2 + (2 + g)^2 = 6 + 3 g^2 <= 18      -> gamma = 2, b = -1
    honest = torch.tensor([[0.0], [0.0], [3.0]], dtype=torch.float64)
    mm, ms = build("minmax", 2, perturbation="unit"), build("minsum", 2, perturbation="unit-vec")
    torch.testing.assert_close(mm(honest), rows([0.0], 2))
    torch.testing.assert_close(ms(honest), rows([-1.0], 2))
    assert mm.last_info["gamma"] == pytest.approx(1.0) and ms.last_info["gamma"] == pytest.approx(2.0)
    # std perturbation: p = -sqrt(3)
    torch.testing.assert_close(build("minmax", 1)(honest), rows([0.0], 1))
    torch.testing.assert_close(build("minsum", 1, perturbation="std")(honest), rows([-1.0], 1))
    torch.testing.assert_close(build("minmax", 1, perturbation="sign")(honest), rows([0.0], 1))


def _bisection_gamma(honest, p, kind, gamma=10.0, tol=1e-10):
    """The authors' search (Shejwalkar & Houmansadr 2021, Alg. 1), with distances computed directly."""
    mu = honest.mean(0)
    d = torch.cdist(honest, honest) ** 2
    bound = d.max() if kind == "minmax" else d.sum(1).max()

    def ok(g):
        dist = ((honest - (mu + g * p)) ** 2).sum(1)
        return bool((dist.max() if kind == "minmax" else dist.sum()) <= bound)

    step, best = gamma / 2, 0.0
    while abs(step) > tol:
        if ok(gamma):
            best, gamma = gamma, gamma + step
        else:
            gamma = gamma - step
        step /= 2
    return best


@pytest.mark.parametrize("kind", ["minmax", "minsum"])
@pytest.mark.parametrize("perturbation", ["std", "unit", "sign"])
def test_minmax_minsum_gamma_matches_the_authors_bisection(kind, perturbation):
    g = torch.Generator().manual_seed(3)
    honest = torch.randn((8, 40), generator=g, dtype=torch.float64) + 0.5
    attack = build(kind, 2, perturbation=perturbation)
    out = attack(honest)
    mu = honest.mean(0)
    p = {"std": -honest.std(0), "unit": -mu / mu.norm(), "sign": -mu.sign()}[perturbation]
    gamma = _bisection_gamma(honest, p, kind)
    assert attack.last_info["gamma"] == pytest.approx(gamma, rel=1e-6)
    torch.testing.assert_close(out, (mu + attack.last_info["gamma"] * p).expand(2, 40))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_minmax_minsum_constraints_hold_and_are_tight(dtype, cloud):
    honest = cloud(12, 500, seed=4, dtype=dtype)
    pair = torch.cdist(honest.double(), honest.double()) ** 2
    for kind, bound, stat in [
        ("minmax", pair.max(), lambda dist: dist.max()),
        ("minsum", pair.sum(1).max(), lambda dist: dist.sum()),
    ]:
        attack = build(kind, 3)
        b = attack(honest)[0].double()
        dist = ((honest.double() - b) ** 2).sum(1)
        tol = 1e-4 if dtype == torch.float32 else 1e-9
        assert stat(dist) <= bound * (1 + tol)
        # tight: 1% further along p breaks the constraint
        mu = honest.double().mean(0)
        farther = mu + 1.01 * (b - mu)
        assert stat(((honest.double() - farther) ** 2).sum(1)) > bound
        assert attack.last_info["gamma"] > 0


def test_minmax_degenerate_identical_honest_vectors_send_the_mean():
    honest = torch.ones((4, 5))
    for kind in ("minmax", "minsum"):
        torch.testing.assert_close(build(kind, 2)(honest), torch.ones((2, 5)))


def test_label_flipping_vector_convention_is_the_mean():
    # both variants, as vector attacks, send the mean of their inputs (flipped-label vectors)
    torch.testing.assert_close(build("lf", 2)(H), rows([3.0, 4.0, 5.0], 2))
    torch.testing.assert_close(build("lf-lab", 3)(H), rows([3.0, 4.0, 5.0], 3))


def test_single_honest_vector_std_is_zero_not_nan():
    x = torch.tensor([[1.0, -2.0]])
    out = build("alie", 1, z=1.0)(x)
    assert torch.isfinite(out).all() and math.isclose(float(out[0, 1]), -2.0)
