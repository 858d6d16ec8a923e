"""Inline parameters (``"krum(m=2)"``, ``"z=1.5, eps=0.1"``): one parser for both registries and the app."""

from __future__ import annotations

import pytest

from resam_flower._params import parse_call, parse_kwargs
from resam_flower.aggregators import build as build_rule
from resam_flower.app.config import parse_params
from resam_flower.attacks import build as build_attack


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("   ", {}),
        (None, {}),
        ("m=2", {"m": 2}),
        (" z=1.5,  eps=0.1 ", {"z": 1.5, "eps": 0.1}),
        ("target='max-variance'", {"target": "max-variance"}),
        (
            "a=-1e3, b=None, c=True, d=(1, 2), e=[0.5], g={'k': 1}",
            {"a": -1000.0, "b": None, "c": True, "d": (1, 2), "e": [0.5], "g": {"k": 1}},
        ),
        ("m=2,", {"m": 2}),
    ],
)
def test_parse_kwargs_reads_literal_keyword_arguments(text, expected):
    assert parse_kwargs(text, error="unused") == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("2", "positional value 2"),
        ("m=", "not key=value pairs"),
        ("m=2 # comment", "not key=value pairs"),
        ("max-iter=3", "not key=value pairs"),
        ("m=2)(k=1", "not key=value pairs"),  # a call of a call: no hidden extra parameters
        ("m=2), _(k=1", "not key=value pairs"),
        ("m=len('a')", "m=len('a') is not a literal"),
        ("m=lambda: 1", "m=lambda: 1 is not a literal"),
        ("m={[1]: 2}", "m={[1]: 2} is not a literal"),
        ("**{'m': 2}", "**{'m': 2} unpacking"),
        ("m=1, m=2", "m given twice"),
    ],
)
def test_parse_kwargs_errors_start_with_the_callers_message_and_say_what_is_wrong(text, problem):
    with pytest.raises(ValueError) as info:
        parse_kwargs(text, error=f"bad thing {text!r}: use key=value")
    assert str(info.value) == f"bad thing {text!r}: use key=value ({problem})"


def test_parse_call_splits_name_and_parameters():
    assert parse_call("krum", what="x") == ("krum", {})
    assert parse_call("  krum ( m=2 ) ", what="x") == ("krum", {"m": 2})
    assert parse_call("mean()", what="x") == ("mean", {})
    assert parse_call("Optimal-ALIE(z=1)", what="x") == ("Optimal-ALIE", {"z": 1})
    with pytest.raises(ValueError, match=r"^bad widget 'mean\(m=2\)x': expected name\(key=value, \.\.\.\)$"):
        parse_call("mean(m=2)x", what="widget")
    with pytest.raises(
        ValueError, match=r"^bad parameters in widget 'mean\(2\)': use name\(key=value, \.\.\.\) \(positional"
    ):
        parse_call("mean(2)", what="widget")


def test_the_three_users_share_syntax_and_name_the_bad_value():
    assert build_rule("multikrum(m=2)", f=1).spec == "multikrum(m=2)"
    assert build_attack("alie(z=1.5)", f=2).spec == "alie(z=1.5)"
    assert parse_params("z=1.5, eps=0.1") == {"z": 1.5, "eps": 0.1}
    with pytest.raises(
        ValueError, match=r"bad parameters in aggregator stage 'multikrum\(m=1, m=2\)'.*twice"
    ):
        build_rule("multikrum(m=1, m=2)", f=1)
    with pytest.raises(ValueError, match=r"bad parameters in attack spec 'alie\(z=1\)\(z=2\)'"):
        build_attack("alie(z=1)(z=2)", f=2)
    with pytest.raises(ValueError, match=r"bad attack spec 'alie\(z=1\)x': expected name"):
        build_attack("alie(z=1)x", f=2)
    with pytest.raises(ValueError, match=r"cannot parse parameters 'z=': use key=value, key2=value2"):
        parse_params("  z= ")
