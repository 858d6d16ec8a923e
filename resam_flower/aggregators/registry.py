"""Registry of rules and pre-aggregators, addressed by short lower-case names.

``build("nnm+cwtm", f=3)`` builds NNM followed by the coordinate-wise trimmed mean. A spec is a
``+``-joined chain of names, each optionally with inline parameters (``"bucketing(s=2)+krum(m=3)"``),
or a list of names / built components. Extra keyword parameters are routed either by component name
(``build("bucketing+cwtm", f=3, bucketing={"s": 2})``) or, flat, to every component whose constructor
takes a parameter of that name; a parameter no component takes is an error. Kebab-case names
(``"max-iter"``, as in TOML run configs) are accepted for snake-case parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from .._params import parse_call
from .._registry import Registry
from .base import Aggregator, _Component
from .pipeline import Pipeline

__all__ = ["build", "available", "RULES", "PRE_AGGREGATORS", "resolve"]

#: rule name -> "module:Class" (modules are imported on first use).
RULES: dict[str, str] = {
    "mean": "mean:Mean",
    "cwmed": "median:CoordinateWiseMedian",
    "cwtm": "trimmed_mean:CoordinateWiseTrimmedMean",
    "meamed": "meamed:MeanAroundMedian",
    "gm": "geometric_median:GeometricMedian",
    "krum": "krum:Krum",
    "multikrum": "krum:MultiKrum",
    "mda": "mda:MinimumDiameterAveraging",
    "cc": "centered_clipping:CenteredClipping",
    "monna": "monna:MoNNA",
    "caf": "caf:CAF",
    "smea": "smea:SMEA",
    "bulyan": "bulyan:Bulyan",
    "dnc": "dnc:DnC",
}

#: pre-aggregator name -> "module:Class".
PRE_AGGREGATORS: dict[str, str] = {
    "nnm": "nnm:NearestNeighborMixing",
    "bucketing": "bucketing:Bucketing",
    "clipping": "clipping:Clipping",
    "arc": "arc:AdaptiveRobustClipping",
}

ALIASES: dict[str, str] = {
    "average": "mean",
    "median": "cwmed",
    "trmean": "cwtm",
    "trimmed-mean": "cwtm",
    "geomed": "gm",
    "geometric-median": "gm",
    "multi-krum": "multikrum",
    "centered-clipping": "cc",
}


def available() -> dict[str, list[str]]:
    """Names that :func:`build` accepts, by family."""
    return {"rules": sorted(RULES), "pre_aggregators": sorted(PRE_AGGREGATORS), "aliases": sorted(ALIASES)}


_REGISTRY: Registry[type[_Component]] = Registry(
    "aggregator", {**RULES, **PRE_AGGREGATORS}, ALIASES, package=__package__
)


def resolve(name: str) -> type[_Component]:
    """The class registered under ``name`` (or an alias)."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(
            f"unknown aggregator {name!r}; rules: {', '.join(sorted(RULES))}; "
            f"pre-aggregators: {', '.join(sorted(PRE_AGGREGATORS))}"
        )
    return cls


def _split_chain(spec: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in spec:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in aggregator spec {spec!r}")
        if ch == "+" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in aggregator spec {spec!r}")
    parts.append("".join(cur))
    if any(not p.strip() for p in parts):
        raise ValueError(f"empty stage in aggregator spec {spec!r}")
    return [p.strip() for p in parts]


def _norm(key: str) -> str:
    return key.replace("-", "_")


def _accepted(cls: type) -> set[str]:
    sig = inspect.signature(cls.__init__)
    return {p for p in sig.parameters if p not in ("self", "f")}


def build(spec: str | Sequence[str | _Component] | _Component, f: int = 0, **params: Any) -> Aggregator:
    """Build a rule, or a :class:`Pipeline` of pre-aggregators followed by a rule.

    Parameters
    ----------
    spec
        ``"cwtm"``, ``"nnm+cwtm"``, ``"bucketing(s=2)+krum"``, a list of such names / built components,
        or a built :class:`Aggregator` (returned unchanged; its ``f`` must equal ``f`` if given non-zero).
    f
        Number of Byzantine inputs to tolerate (shared by every stage).
    **params
        Parameters for the stages, flat or keyed by stage name (see the module docstring).
    """
    if isinstance(spec, Aggregator):
        if f and spec.f != f:
            raise ValueError(f"built aggregator {spec.spec} has f={spec.f}, but f={f} was requested")
        return spec
    stages: list[str | _Component] = _split_chain(spec) if isinstance(spec, str) else list(spec)
    if not stages:
        raise ValueError("empty aggregator spec")
    params = {_norm(k): v for k, v in params.items()}
    named = {
        k: v for k, v in params.items() if isinstance(v, dict) and _norm(k) in {**RULES, **PRE_AGGREGATORS}
    }
    flat = {k: v for k, v in params.items() if k not in named}
    used: set[str] = set()
    built: list[_Component] = []
    for stage in stages:
        if isinstance(stage, _Component):
            built.append(stage)
            continue
        name, inline = parse_call(stage, what="aggregator stage")
        cls = resolve(name)
        accepted = _accepted(cls)
        kwargs = {k: v for k, v in flat.items() if k in accepted}
        used |= kwargs.keys()
        kwargs.update({_norm(k): v for k, v in named.get(cls.name, {}).items()})
        kwargs.update({_norm(k): v for k, v in inline.items()})
        unknown = set(kwargs) - accepted
        if unknown:
            raise ValueError(
                f"{cls.name} takes no parameter {', '.join(sorted(unknown))}; "
                f"it takes: {', '.join(sorted(accepted)) or 'none'}"
            )
        built.append(cls(f=f, **kwargs))
    leftover = set(flat) - used
    if leftover:
        raise ValueError(f"no stage of {spec!r} takes parameter(s) {', '.join(sorted(leftover))}")
    *pre, rule = built
    if not isinstance(rule, Aggregator):
        raise ValueError(f"the last stage of {spec!r} must be a rule, got pre-aggregator {rule.name!r}")
    if not pre:
        return rule
    return Pipeline(pre, rule)
