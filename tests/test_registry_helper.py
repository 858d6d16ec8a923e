"""The one registry helper behind rules, attacks, models, data sets and partitioners."""

from __future__ import annotations

import pytest

from resam_flower._registry import Registry, accepted_params, check_params
from resam_flower.aggregators import build
from resam_flower.attacks import resolve as resolve_attack
from resam_flower.data.sources import _canonical
from resam_flower.models import build_model


def test_names_aliases_and_kebab_case():
    r = Registry("thing", {"trimmed-mean": 1, "median": 2}, {"trmean": "trimmed-mean"})
    assert r.resolve("Trimmed_Mean") == 1 and r.resolve(" TRMEAN ") == 1 and "median" in r
    assert r.canonical("trmean") == "trimmed-mean" and r.get("nope") is None and 3 not in r
    with pytest.raises(
        ValueError, match=r"unknown thing 'nope'; available: median, trimmed-mean \(aliases: trmean\)"
    ):
        r.resolve("nope")
    r.register("mode", 3, aliases=["most-frequent"])
    assert r.resolve("most_frequent") == 3
    with pytest.raises(ValueError, match="already registered"):
        r.register("median", 4)
    with pytest.raises(ValueError, match="aliases point to unknown names"):
        Registry("thing", {"a": 1}, {"b": "c"})


def test_lazy_entries_are_imported_once_from_the_package():
    r = Registry(
        "rule", {"cwtm": "trimmed_mean:CoordinateWiseTrimmedMean"}, package="resam_flower.aggregators"
    )
    cls = r.resolve("cwtm")
    assert cls.__name__ == "CoordinateWiseTrimmedMean" and r.resolve("cwtm") is cls


def test_parameter_checks_name_what_is_accepted():
    def f(self, a, b=1, *args, **kwargs):
        return None

    assert accepted_params(f) == {"a", "b"}
    check_params("f", {"a", "b"}, {"a": 1})
    with pytest.raises(ValueError, match="f takes no parameter c; it takes: a, b"):
        check_params("f", {"a", "b"}, {"a": 1, "c": 2})


def test_every_family_uses_it():
    assert type(build("Trimmed_Mean", f=1)).__name__ == "CoordinateWiseTrimmedMean"
    assert resolve_attack("Sign_Flipping").name == "sf"
    assert _canonical("FMNIST") == "fashion-mnist"
    assert type(build_model("logistic_regression", 10, (1, 8, 8))).__name__ == "LogisticRegression"
    with pytest.raises(ValueError, match=r"unknown model 'nope'; available: .*mlp"):
        build_model("nope")
    with pytest.raises(ValueError, match="model 'mlp' takes no parameter depth; it takes: hidden"):
        build_model("mlp", 10, (1, 8, 8), depth=3)
