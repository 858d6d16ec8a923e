"""Building attacks by name: aliases, kebab/snake case, inline parameters, clear errors."""

from __future__ import annotations

import pytest
import torch

from resam_flower.attacks import ATTACKS, Attack, available, build
from resam_flower.attacks.alie import ALittleIsEnough
from resam_flower.attacks.ipm import InnerProductManipulation
from resam_flower.attacks.label_flip import LabelFlipping, LabLabelFlipping
from resam_flower.attacks.optimal import OptimalALIE
from resam_flower.attacks.simple import Gaussian, Mimic

OMNISCIENT = {"alie", "ipm", "optimal-alie", "optimal-ipm", "minmax", "minsum", "mimic", "lf-lab"}
DATA_ATTACKS = {"lf": "lf", "lf-lab": "lf-lab"}  # name -> the role a simulated Byzantine node is sent


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_registered_attack_builds_and_reports_its_capabilities(name):
    a = build(name, 2)
    assert isinstance(a, Attack) and a.name == name and a.f == 2
    assert a.needs_honest == (name in OMNISCIENT)
    assert a.client_side == (name not in OMNISCIENT)
    assert a.data_attack == (name in DATA_ATTACKS)
    assert a.client_role == DATA_ATTACKS.get(name)
    assert a.needs_honest_data == (name == "lf-lab")
    assert build(a.spec, 2).spec == a.spec  # the spec rebuilds it


@pytest.mark.parametrize(
    ("spec", "cls"),
    [("foe", InnerProductManipulation), ("FOE", InnerProductManipulation), ("lie", ALittleIsEnough),
     ("optimal_alie", OptimalALIE), ("Optimal-ALIE", OptimalALIE), ("label_flipping", LabelFlipping),
     ("label-flipping-lab", LabLabelFlipping), ("lf_lab", LabLabelFlipping),
     ("noise", Gaussian), (" mimic ", Mimic)],
)
def test_aliases_and_case(spec, cls):
    assert type(build(spec, 1)) is cls


def test_parameters_kebab_snake_byzfl_names_and_inline():
    assert build("ipm", 1, tau=2.0).eps == 2.0
    assert build("alie", 1, tau=1.5).z == 1.5
    assert build("mimic", 1, epsilon=2).target == 2
    assert build("mimic", 1, target="max_variance").target == "max-variance"
    assert build("alie(z=1.5)", 1).z == 1.5
    assert build("foe(eps=3)", 1, eps=1.0).eps == 3.0  # inline wins
    o = build("optimal-alie", 3, **{"evals": 5, "aggregator": "mean", "delta": 0.5})
    assert (o.evals, o.delta, o.aggregator.spec, o.aggregator.f) == (5, 0.5, "mean", 3)
    assert build("minmax", 1, perturbation="unit_vec").perturbation == "unit"


def test_available_lists_names():
    av = available()
    assert "alie" in av["attacks"] and "foe" in av["aliases"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: build("nope", 1), "unknown attack 'nope'.*alie"),
        (lambda: build("alie", -1), "f must be >= 0, got -1"),
        (lambda: build("alie", 1.5), "f must be an integer, got 1.5"),
        (lambda: build("alie", 1, sigma=1.0), "alie takes no parameter 'sigma'; it takes: z"),
        (lambda: build("sf", 1, eps=1.0), "sf takes no parameter 'eps'; it takes: none"),
        (lambda: build("gaussian", 1, sigma=-0.1), "sigma must be >= 0.0, got -0.1"),
        (lambda: build("gaussian", 1, sigma=float("nan")), "sigma must be finite"),
        (lambda: build("gaussian", 1, seed=-1), "seed must be >= 0, got -1"),
        (lambda: build("ipm", 1, eps="big"), "eps must be a number or one of classic, lab, byzfl, got 'big'"),
        (lambda: build("alie", 1, z="big"), "z must be a number or one of classic, karimireddy, lab, byzfl"),
        (lambda: build("ipm", 1, eps=1.0, tau=2.0), "given twice"),
        (lambda: build("alie", 1, z=float("inf")), "z must be finite"),
        (lambda: build("mimic", 1, target=-1), "target must be >= 0, got -1"),
        (lambda: build("mimic", 1, target="loudest"), "got 'loudest'"),
        (lambda: build("minmax", 1, perturbation="random"), "perturbation must be one of.*'random'"),
        (lambda: build("optimal-ipm", 1, evals=0), "evals must be >= 1, got 0"),
        (lambda: build("optimal-ipm", 1, ratio=1.0), "ratio must be < 1.0, got 1.0"),
        (lambda: build("optimal-ipm", 1, delta=0.0), "delta must be > 0.0, got 0.0"),
        (lambda: build("optimal-ipm", 1, aggregator="nope"), "unknown aggregator 'nope'"),
        (lambda: build("optimal-ipm", 1, aggregator=3), "aggregator must be a rule spec"),
        (lambda: build("alie(z=)", 1), "bad parameters in attack spec"),
        (lambda: build("alie(z=1", 1), "expected name\\(key=value"),
        (lambda: build(build("sf", 2), 3), "has f=2; cannot rebuild it with f=3"),
    ],
)
def test_bad_configuration_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_built_attack_passes_through():
    a = build("sf", 2)
    assert build(a, 2) is a


def test_call_time_errors():
    with pytest.raises(ValueError, match="needs at least one honest vector"):
        build("alie", 1)(torch.empty((0, 3)))
    with pytest.raises(ValueError, match="expects an \\(h, d\\) tensor"):
        build("sf", 1)(torch.ones(3))
    with pytest.raises(TypeError, match="floating-point"):
        build("sf", 1)(torch.ones((2, 3), dtype=torch.int64))
    with pytest.raises(ValueError, match="classic ALIE z needs a Byzantine minority.*n=3, f=2"):
        build("alie", 2)(torch.ones((1, 3)))
    assert build("sf", 2)(torch.ones((2, 3)), f=0).shape == (0, 3)
