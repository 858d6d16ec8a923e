"""The registry API: spec strings, parameter routing, aliases, errors, pipelines, spec round-trip.

Every registered module is imported as it is: a module that does not import fails the suite (no skip).
"""

from __future__ import annotations

import inspect

import pytest
import torch

from resam_flower.aggregators import (
    PRE_AGGREGATORS,
    RULES,
    Aggregator,
    Pipeline,
    PreAggregator,
    available,
    build,
    resolve,
)
from resam_flower.aggregators.registry import ALIASES

ALL = sorted(RULES) + sorted(PRE_AGGREGATORS)


def constructor_params(name: str) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(resolve(name).__init__)
    return {k: p for k, p in sig.parameters.items() if k not in ("self", "f")}


def rows(n: int, d: int = 3, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


# -- names and aliases ---------------------------------------------------------------------------------
def test_available_lists_every_registered_name():
    names = available()
    assert names["rules"] == sorted(RULES)
    assert names["pre_aggregators"] == sorted(PRE_AGGREGATORS)
    assert set(names["aliases"]) == set(ALIASES)
    assert not set(RULES) & set(PRE_AGGREGATORS)


@pytest.mark.parametrize("name", ALL)
def test_registered_class_matches_its_name_and_family(name):
    cls = resolve(name)
    assert cls.name == name
    family = Aggregator if name in RULES else PreAggregator
    assert issubclass(cls, family)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_resolves_to_its_target(alias):
    target = ALIASES[alias]
    assert target in RULES or target in PRE_AGGREGATORS
    assert resolve(alias) is resolve(target)
    assert build(alias, f=0).name == target


def test_names_are_case_and_space_insensitive():
    assert build("  Mean ").name == "mean"
    assert build("AVERAGE").name == "mean"


# -- errors ----------------------------------------------------------------------------------------------
def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown aggregator 'nope'.*cwtm.*nnm"):
        build("nope", f=1)


@pytest.mark.parametrize(
    "spec", ["krum(m=2", "krum)m=2(", "bucketing(s=2))+krum", "krum(m=(1)", "mean(", ")"]
)
def test_unbalanced_parentheses(spec):
    with pytest.raises(ValueError, match="parenthes|bad"):
        build(spec, f=1)


@pytest.mark.parametrize(
    "spec", ["mean(2)", "mean(m=)", "mean(m=2)x", "mean(m=len('a'))", "mean(**{'m': 2})"]
)
def test_bad_inline_parameters(spec):
    with pytest.raises(ValueError, match="bad"):
        build(spec, f=1)


@pytest.mark.parametrize("spec", ["", "+", "nnm++cwtm", "cwtm+", " + mean"])
def test_empty_stage(spec):
    with pytest.raises(ValueError, match="empty"):
        build(spec, f=1)


def test_unknown_inline_parameter_names_what_is_accepted():
    with pytest.raises(ValueError, match=r"mean takes no parameter foo; it takes: none"):
        build("mean(foo=1)")


def test_unknown_flat_parameter():
    with pytest.raises(ValueError, match=r"no stage of 'mean' takes parameter\(s\) foo"):
        build("mean", foo=1)


def test_unknown_parameter_routed_by_stage_name():
    with pytest.raises(ValueError, match="nnm takes no parameter bogus"):
        build("nnm+cwtm", f=1, nnm={"bogus": 1})


@pytest.mark.parametrize("bad_f", [-1, 1.5, "2", True])
def test_bad_f_at_build_time(bad_f):
    with pytest.raises(ValueError, match="f must be"):
        build("mean", f=bad_f)


@pytest.mark.parametrize("pre", sorted(PRE_AGGREGATORS))
def test_pre_aggregator_cannot_be_last(pre):
    with pytest.raises(ValueError, match=f"must be a rule, got pre-aggregator '{pre}'"):
        build(f"cwmed+{pre}", f=1)
    with pytest.raises(ValueError, match="must be a rule"):
        build(pre, f=1)


def test_rule_in_the_middle_is_refused():
    with pytest.raises(TypeError, match="only the last stage may be a rule"):
        build("cwmed+mean", f=1)


def test_built_aggregator_passes_through_unless_f_disagrees():
    rule = build("mean", f=2)
    assert build(rule) is rule
    assert build(rule, f=2) is rule
    with pytest.raises(ValueError, match="has f=2, but f=3"):
        build(rule, f=3)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("f", [1, 2])
def test_f_too_large_for_n_at_call_time(name, f):
    params = {"idx": 0} if name == "monna" else {}  # MoNNA must be told which input it trusts
    rule = build(name, f=f, **params)
    m = rule.min_inputs(f)
    assert m == rule.min_inputs()
    if m <= 1:
        pytest.skip(f"{name} accepts any n >= 1")
    x = rows(m - 1)
    with pytest.raises(ValueError, match=rf"(?s)(?=.*\bn={m - 1}\b)(?=.*\bf={f}\b)"):
        rule(x)
    out = build(name, f=f, **params)(rows(m))
    assert out.shape == (3,) and torch.isfinite(out).all()


def test_pipeline_with_mismatched_f_is_refused():
    with pytest.raises(ValueError, match="share f"):
        Pipeline([resolve("nnm")(f=1)], resolve("cwtm")(f=2))


# -- parameter routing --------------------------------------------------------------------------------
def test_inline_parameters():
    p = build("bucketing(s=2)+krum", f=1)
    assert isinstance(p, Pipeline)
    assert p.pre[0].params()["s"] == 2
    assert p.spec.startswith("bucketing(") and "s=2" in p.pre[0].spec
    assert p.rule.name == "krum"


def test_parameters_routed_by_stage_name_and_flat():
    torch.manual_seed(0)  # seeds drawn at build time come from torch's global generator
    by_name = build("bucketing+cwtm", f=1, bucketing={"s": 3})
    torch.manual_seed(0)
    flat = build("bucketing+cwtm", f=1, s=3)
    assert by_name.pre[0].params()["s"] == 3
    assert flat.spec == by_name.spec


def test_inline_parameters_override_routed_ones():
    p = build("bucketing(s=4)+cwtm", f=1, bucketing={"s": 3})
    assert p.pre[0].params()["s"] == 4


def _params_with_underscore() -> list[tuple[str, str]]:
    out = []
    for name in ALL:
        params = constructor_params(name)
        out += [(name, k) for k, p in params.items() if "_" in k and p.default is not inspect.Parameter.empty]
    return out


def test_kebab_case_keys_flat_named_and_inline():
    found = _params_with_underscore()
    assert found, "no component has a snake_case parameter: the kebab-case route is untested"
    for name, key in found:
        default = constructor_params(name)[key].default
        kebab = key.replace("_", "-")
        spec = name if name in RULES else f"{name}+mean"
        torch.manual_seed(0)  # components with a seed draw it from torch's global generator
        a = build(spec, f=0, **{kebab: default})
        torch.manual_seed(0)
        b = build(spec, f=0, **{name: {kebab: default}})
        torch.manual_seed(0)
        c = build(spec.replace(name, f"{name}({key}={default!r})", 1), f=0)
        assert a.spec == b.spec == c.spec, (name, key)


def test_flat_parameter_goes_to_every_stage_that_takes_it():
    shared = {}
    for name in ALL:
        for k in constructor_params(name):
            shared.setdefault(k, []).append(name)
    pairs = [
        (k, v) for k, v in shared.items()
        if any(n in PRE_AGGREGATORS for n in v) and any(n in RULES for n in v)
    ]
    assert pairs, "no pre-aggregator shares a parameter name with a rule: flat routing is untested"
    key, owners = pairs[0]
    pre = next(n for n in owners if n in PRE_AGGREGATORS)
    rule = next(n for n in owners if n in RULES)
    value = constructor_params(pre)[key].default
    p = build(f"{pre}+{rule}", f=1, **{key: value})
    assert p.pre[0].params().get(key, value) == value


def test_list_spec_with_names_and_built_components():
    a = build(["nnm", "cwtm"], f=1)
    b = build([resolve("nnm")(f=1), "cwtm"], f=1)
    assert isinstance(a, Pipeline) and isinstance(b, Pipeline)
    assert a.spec == b.spec == "nnm+cwtm"
    x = rows(7)
    torch.testing.assert_close(a(x), b(x))


# -- pipelines ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["nnm+krum", "bucketing(s=2)+krum", "arc+nnm+cwtm", "clipping+cwmed",
                                  "bucketing(s=3)+bulyan"])
@pytest.mark.parametrize("f", [1, 2])
def test_pipeline_min_inputs_is_the_smallest_accepted_n(spec, f):
    pipe = build(spec, f=f)
    m = pipe.min_inputs()
    # the stages' own conditions, propagated through the output sizes
    n_expected, ok = 0, False
    while not ok:
        n_expected += 1
        n, ff, ok = n_expected, f, True
        for p in pipe.pre:
            ok = ok and n >= p.min_inputs(ff)
            n, ff = p.output_shape(n, ff)
        ok = ok and n >= pipe.rule.min_inputs(ff)
    assert m == n_expected
    assert m >= pipe.rule.min_inputs(f) or any(p.output_shape(m, f)[0] != m for p in pipe.pre)
    assert pipe(rows(m)).shape == (3,)
    if m > 1:
        with pytest.raises(ValueError, match=rf"n={m - 1}\b"):
            build(spec, f=f)(rows(m - 1))


def test_bucketing_pipeline_needs_more_inputs_than_the_rule_alone():
    krum = build("krum", f=2).min_inputs()
    assert build("bucketing(s=2)+krum", f=2).min_inputs() > krum


def test_pipeline_last_info_has_one_entry_per_stage():
    p = build("nnm+cwtm", f=1)
    p(rows(7))
    assert set(p.last_info) == {"nnm", "cwtm"}


# -- spec round-trip ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RULES))
def test_spec_round_trip_for_every_rule(name):
    a = build(name, f=1, **({"idx": 0} if name == "monna" else {}))
    b = build(a.spec, f=1)
    assert type(b) is type(a)
    assert b.spec == a.spec and b.params() == a.params() and repr(b) == repr(a)


@pytest.mark.parametrize("name", sorted(PRE_AGGREGATORS))
def test_spec_round_trip_for_every_pre_aggregator(name):
    a = build(f"{name}+cwmed", f=1)
    b = build(a.spec, f=1)
    assert b.spec == a.spec and b.pre[0].params() == a.pre[0].params()


@pytest.mark.parametrize("spec", ["bucketing(s=2)+krum", "arc+nnm+multikrum(m=3)", "clipping(c=0.5)+gm"])
def test_spec_round_trip_with_parameters(spec):
    a = build(spec, f=1)
    b = build(a.spec, f=1)
    assert b.spec == a.spec
    for part in spec.split("+"):
        if "(" in part:
            assert part[part.index("(") + 1 : -1] in a.spec
