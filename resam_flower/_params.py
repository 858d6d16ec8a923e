"""Inline parameters as written in specs and run configs: ``"krum(m=2)"``, ``"z=1.5, eps=0.1"``.

The parameters are Python keyword arguments whose values are literals (numbers, strings, booleans,
``None``, tuples, lists, dicts, sets): ``key=value, key2=value2``. They are parsed with :mod:`ast`, never
evaluated, so a spec cannot run code. The aggregator registry (``"bucketing(s=2)+krum"``), the attack
registry (``"alie(z=1.5)"``) and the app's run config (``aggregator-params = "m=2"``) all read them here.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["parse_kwargs", "parse_call"]


def parse_kwargs(text: str | None, *, error: str) -> dict[str, Any]:
    """``"z=1.5, target='max-variance'"`` -> ``{"z": 1.5, "target": "max-variance"}``; blank -> ``{}``.

    Parameters
    ----------
    text
        Comma-separated ``key=value`` pairs; keys are identifiers, values Python literals.
    error
        Start of the :class:`ValueError` message raised when ``text`` does not parse; it should name
        ``text``. What is wrong (``"m given twice"``, ``"m=len('a') is not a literal"``) is appended.
    """
    text = (text or "").strip()
    if not text:
        return {}
    source = f"_({text})"

    def bad(problem: str) -> ValueError:
        return ValueError(f"{error} ({problem})")

    try:
        call = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise bad("not key=value pairs") from exc
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_"):
        raise bad("not key=value pairs")  # e.g. "m=2)(k=1", which would parse as a call of a call
    if call.args:
        raise bad(f"positional value {ast.get_source_segment(source, call.args[0])}")
    params: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise bad(f"**{ast.get_source_segment(source, kw.value)} unpacking")
        if kw.arg in params:
            raise bad(f"{kw.arg} given twice")
        try:
            params[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            raise bad(f"{kw.arg}={ast.get_source_segment(source, kw.value)} is not a literal") from exc
    return params


def parse_call(spec: str, *, what: str) -> tuple[str, dict[str, Any]]:
    """``"krum(m=2)"`` -> ``("krum", {"m": 2})``; ``"krum"`` -> ``("krum", {})``.

    ``what`` names the kind of spec in error messages (``"aggregator stage"``, ``"attack spec"``). The name
    is returned stripped but otherwise as written (case and aliases are the caller's business).
    """
    spec = spec.strip()
    if "(" not in spec:
        return spec, {}
    if not spec.endswith(")"):
        raise ValueError(f"bad {what} {spec!r}: expected name(key=value, ...)")
    name, inner = spec[: spec.index("(")].strip(), spec[spec.index("(") + 1 : -1]
    return name, parse_kwargs(inner, error=f"bad parameters in {what} {spec!r}: use name(key=value, ...)")
