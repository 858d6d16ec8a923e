"""Registry of the Byzantine attacks, addressed by short lower-case names.

``build("alie", f=3)``, ``build("ipm", f=3, eps=2.0)``, ``build("optimal-alie", f=3, aggregator=rule)``
or, inline as in TOML run configs, ``build("alie(z=1.5)", f=3)``. Names are case-insensitive and
snake_case or kebab-case alike (``"optimal_alie"`` == ``"optimal-alie"``), and so are parameter
names. Aliases: ``foe`` -> ``ipm``, ``lie`` -> ``alie``, ``signflip`` -> ``sf``, ``noise`` -> ``gaussian``,
``labelflip`` -> ``lf``, ``labelflip-lab`` -> ``lf-lab`` and a few more (see :data:`ALIASES`); ByzFL's
parameter names are accepted (``tau`` for IPM's ``eps`` and ALIE's ``z``, ``epsilon`` for Mimic's
``target``). Unknown names or parameters raise :class:`ValueError` listing the accepted ones.
"""

from __future__ import annotations

import inspect
from typing import Any

from .._params import parse_call
from .._registry import Registry
from .base import Attack

__all__ = ["build", "available", "resolve", "ATTACKS", "ALIASES"]

#: attack name -> "module:Class" (modules are imported on first use).
ATTACKS: dict[str, str] = {
    "sf": "simple:SignFlipping",
    "inf": "simple:Infinity",
    "gaussian": "simple:Gaussian",
    "mimic": "simple:Mimic",
    "ipm": "ipm:InnerProductManipulation",
    "alie": "alie:ALittleIsEnough",
    "optimal-alie": "optimal:OptimalALIE",
    "optimal-ipm": "optimal:OptimalIPM",
    "minmax": "minmax:MinMax",
    "minsum": "minmax:MinSum",
    "lf": "label_flip:LabelFlipping",
    "lf-lab": "label_flip:LabLabelFlipping",
}

ALIASES: dict[str, str] = {
    "foe": "ipm",
    "fall-of-empires": "ipm",
    "inner-product-manipulation": "ipm",
    "lie": "alie",
    "a-little-is-enough": "alie",
    "sign-flipping": "sf",
    "signflip": "sf",
    "sign-flip": "sf",
    "infinity": "inf",
    "noise": "gaussian",
    "optimal-foe": "optimal-ipm",
    "opt-ipm": "optimal-ipm",
    "opt-alie": "optimal-alie",
    "min-max": "minmax",
    "min-sum": "minsum",
    "label-flipping": "lf",
    "labelflip": "lf",
    "label-flip": "lf",
    "label-flipping-lab": "lf-lab",
    "labelflip-lab": "lf-lab",
}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def available() -> dict[str, list[str]]:
    """Names that :func:`build` accepts."""
    return {"attacks": sorted(ATTACKS), "aliases": sorted(ALIASES)}


_REGISTRY: Registry[type[Attack]] = Registry("attack", ATTACKS, ALIASES, package=__package__)


def resolve(name: str) -> type[Attack]:
    """The class registered under ``name`` (or an alias)."""
    if not isinstance(name, str):
        raise ValueError(f"attack name must be a string, got {name!r}")
    return _REGISTRY.resolve(name)


def accepted(cls: type[Attack]) -> set[str]:
    """Canonical parameter names of an attack class (``f`` excluded)."""
    return {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "f")}


def normalise_params(cls: type[Attack], params: dict[str, Any]) -> dict[str, Any]:
    """Snake-case the keys, map aliases to canonical names, reject unknown or duplicate parameters."""
    names = accepted(cls)
    out: dict[str, Any] = {}
    for raw, value in params.items():
        key = raw.strip().lower().replace("-", "_")
        key = cls.param_aliases.get(key, key)
        if key not in names:
            raise ValueError(
                f"{cls.name} takes no parameter {raw!r}; it takes: {', '.join(sorted(names)) or 'none'}"
            )
        if key in out:
            raise ValueError(f"{cls.name}: parameter {key!r} given twice (as {raw!r} and an alias)")
        out[key] = value
    return out


def build(name: str | Attack, f: int, **params: Any) -> Attack:
    """Build an attack forging ``f`` Byzantine vectors per call.

    Parameters
    ----------
    name
        ``"alie"``, ``"foe"``, ``"optimal-alie"``, ``"alie(z=1.5)"``... (see :func:`available`), or a
        built :class:`Attack` (returned unchanged; its ``f`` must equal ``f`` and no parameters be given).
    f
        Number of Byzantine workers (``>= 0``).
    **params
        The attack's parameters (kebab-case or ByzFL names accepted); inline parameters in ``name`` win.

    Returns
    -------
    Attack
        A callable ``attack(honest: Tensor (h, d)) -> Tensor (f, d)`` (same dtype and device).
    """
    if isinstance(name, Attack):
        if name.f != f or params:
            raise ValueError(
                f"built attack {name.spec} has f={name.f}; cannot rebuild it with f={f}"
                + (f" and parameters {sorted(params)}" if params else "")
            )
        return name
    if not isinstance(name, str):
        raise ValueError(f"attack must be a name or a built Attack, got {name!r:.80}")
    base, inline = parse_call(name, what="attack spec")
    cls = resolve(base)
    kwargs = normalise_params(cls, params)
    kwargs.update(normalise_params(cls, inline))
    return cls(f=f, **kwargs)
