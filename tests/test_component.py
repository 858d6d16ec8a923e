"""The base shared by rules, pre-aggregators and attacks: build-time checks, spec/repr, input validation."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from resam_flower import _component
from resam_flower._component import Component, check_float, check_int
from resam_flower.aggregators import base as agg_base
from resam_flower.aggregators import build as build_rule
from resam_flower.attacks import base as attack_base
from resam_flower.attacks import build as build_attack


class _Toy(Component):
    name = "toy"

    def __init__(self, f: int = 0, a: float = 1.0, tag: str = "x") -> None:
        super().__init__(f)
        self.a = check_float("a", a, low=0.0)
        self.tag = tag

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "tag": self.tag}


class _Bare(Component):
    name = "bare"


class _HonestRows(Component):
    name = "rows"
    _rows = "h"
    _empty_ok = True


def test_the_checks_are_one_function_everywhere():
    for module in (agg_base, attack_base):
        assert module.check_int is _component.check_int
        assert module.check_float is _component.check_float
    assert issubclass(agg_base.Aggregator, Component) and issubclass(agg_base.PreAggregator, Component)
    assert issubclass(attack_base.Attack, Component)


def test_check_int_and_check_float_name_value_and_bound():
    assert check_int("m", 3.0) == 3 and isinstance(check_int("m", 3.0), int)
    with pytest.raises(ValueError, match=r"m must be an integer, got True"):
        check_int("m", True)
    with pytest.raises(ValueError, match=r"m must be >= 1, got 0"):
        check_int("m", 0, low=1)
    with pytest.raises(ValueError, match=r"m must be <= 4, got 5"):
        check_int("m", 5, high=4)
    with pytest.raises(ValueError, match=r"c must be > 0.0, got 0.0"):
        check_float("c", 0, low=0.0, low_open=True)
    with pytest.raises(ValueError, match=r"c must be < 1.0, got 1.0"):
        check_float("c", 1.0, high=1.0, high_open=True)
    with pytest.raises(ValueError, match=r"c must be finite, got nan"):
        check_float("c", float("nan"))
    with pytest.raises(ValueError, match=r"c must be a number, got '2'"):
        check_float("c", "2")


def test_f_is_checked_and_defaults_differ_by_family():
    with pytest.raises(ValueError, match=r"f must be >= 0, got -1"):
        _Bare(f=-1)
    assert _Bare().f == 0 and _Bare().last_info == {}
    assert inspect.signature(agg_base.Aggregator.__init__).parameters["f"].default == 0
    assert inspect.signature(attack_base.Attack.__init__).parameters["f"].default == 1


def test_spec_and_repr_follow_params():
    toy = _Toy(f=2, a=0.5, tag="y")
    assert toy.spec == "toy(a=0.5, tag='y')"
    assert repr(toy) == "_Toy(f=2, a=0.5, tag='y')"
    assert _Bare(f=1).spec == "bare" and repr(_Bare(f=1)) == "_Bare(f=1)"
    assert build_rule("multikrum(m=2)", f=1).spec == "multikrum(m=2)"
    assert repr(build_attack("alie(z=1.5)", f=2)) == "ALittleIsEnough(f=2, z=1.5)"


def test_state_hooks_default_to_stateless():
    toy = _Toy()
    toy.reset()
    toy.load_state_dict({})
    assert toy.state_dict() == {}


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        ([[1.0]], TypeError, r"toy expects a torch.Tensor, got list"),
        (torch.ones(3), ValueError, r"toy expects an \(n, d\) tensor, got shape \(3,\)"),
        (torch.ones(2, 3).long(), TypeError, r"toy expects a floating-point tensor, got torch.int64"),
        (torch.ones(0, 3), ValueError, r"toy got no inputs \(n=0\)"),
    ],
)
def test_validate_names_the_component_and_the_problem(x, error, match):
    with pytest.raises(error, match=match):
        _Toy()._validate(x)


def test_validate_rows_symbol_and_empty_inputs():
    with pytest.raises(ValueError, match=r"rows expects an \(h, d\) tensor"):
        _HonestRows()._validate(torch.ones(2, 2, 2))
    empty = torch.ones(0, 3, dtype=torch.float64)
    assert _HonestRows()._validate(empty) is empty
    x = torch.ones(2, 3)
    assert _Toy()._validate(x) is x
