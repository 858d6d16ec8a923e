"""One registry helper for every family addressed by name: rules, attacks, models, data sets, partitioners.

A :class:`Registry` maps short lower-case names (what TOML files and ``--run-config`` use) and their aliases
to entries, which are either objects or lazy ``"module:Attribute"`` references (imported on first use,
relative to the registry's package, so that naming a rule does not import every rule). Names are matched in
kebab case (``"Trimmed_Mean"`` is ``"trimmed-mean"``); an unknown name raises :class:`ValueError` listing what
is available.
:func:`check_params` rejects parameters a constructor does not take, naming the ones it does.

Adding an entry is one line in the family's table (see README, "Adding a rule, an attack or a data set").
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "check_params", "accepted_params"]

T = TypeVar("T")


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Names (and aliases) -> entries of one family.

    Parameters
    ----------
    kind : str
        What the entries are, for messages (``"attack"``, ``"data set"``...).
    entries : mapping
        Canonical name -> object, or ``"module:Attribute"`` imported from ``package`` on first use.
    aliases : mapping, optional
        Alias -> canonical name.
    package : str, optional
        Package of the lazy references.
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T | str],
        aliases: Mapping[str, str] | None = None,
        *,
        package: str | None = None,
    ) -> None:
        self.kind = kind
        self.entries: dict[str, T | str] = {_key(k): v for k, v in entries.items()}
        self.aliases: dict[str, str] = {_key(k): _key(v) for k, v in (aliases or {}).items()}
        unknown = sorted(set(self.aliases.values()) - set(self.entries))
        if unknown:
            raise ValueError(f"{kind} aliases point to unknown names {unknown}")
        self.package = package
        self._loaded: dict[str, T] = {}

    def names(self) -> list[str]:
        """The canonical names, sorted."""
        return sorted(self.entries)

    def canonical(self, name: str) -> str | None:
        """The canonical name of ``name`` or of its alias (``None`` if neither is registered)."""
        if not isinstance(name, str):
            return None
        key = _key(name)
        key = self.aliases.get(key, key)
        return key if key in self.entries else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) is not None

    def get(self, name: str) -> T | None:
        """The entry for ``name`` (or an alias), ``None`` if unknown."""
        key = self.canonical(name)
        if key is None:
            return None
        if key not in self._loaded:
            entry = self.entries[key]
            if isinstance(entry, str) and ":" in entry:
                module, attribute = entry.split(":", 1)
                entry = getattr(importlib.import_module(f"{self.package}.{module}"), attribute)
            self._loaded[key] = entry  # type: ignore[assignment]
        return self._loaded[key]

    def resolve(self, name: str) -> T:
        """The entry for ``name``; an unknown name raises :class:`ValueError` listing the available ones."""
        entry = self.get(name)
        if entry is None:
            raise ValueError(self.unknown_message(name))
        return entry

    def unknown_message(self, name: object) -> str:
        text = f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
        return text + (f" (aliases: {', '.join(sorted(self.aliases))})" if self.aliases else "")

    def register(self, name: str, entry: T, *, aliases: Iterable[str] = ()) -> None:
        """Add an entry (and its aliases); a name already taken raises :class:`ValueError`."""
        key = _key(name)
        taken = [k for k in (key, *map(_key, aliases)) if k in self.entries or k in self.aliases]
        if taken:
            raise ValueError(f"{self.kind} name(s) {taken} are already registered")
        self.entries[key] = entry
        self.aliases.update({_key(a): key for a in aliases})


def accepted_params(func: Callable[..., Any], exclude: Iterable[str] = ("self",)) -> set[str]:
    """The keyword parameters ``func`` (a class: its ``__init__``) takes, minus ``exclude``."""
    target = func.__init__ if inspect.isclass(func) else func
    params = inspect.signature(target).parameters.values()
    skip = set(exclude)
    return {p.name for p in params if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_params(owner: str, accepted: Iterable[str], given: Mapping[str, Any]) -> None:
    """Raise :class:`ValueError` naming the parameters of ``given`` that ``owner`` does not take."""
    allowed = set(accepted)
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(
            f"{owner} takes no parameter {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(allowed)) or 'none'}"
        )
