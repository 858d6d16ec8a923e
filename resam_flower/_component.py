"""What every built component shares: aggregation rules, pre-aggregators and Byzantine attacks.

A component is built once with a fixed ``f`` (the number of Byzantine vectors it tolerates or forges) and
a few parameters, each checked at build time: a bad value raises :class:`ValueError` naming the value and
the bound (:func:`check_int`, :func:`check_float`). It then maps a stacked ``(rows, d)`` floating-point
tensor to a result, leaves diagnostics of the latest call in ``last_info``, and carries what must survive
a checkpoint in ``state_dict()``. Its parameters give both its ``repr`` and the registry ``spec`` that
rebuilds it (``"krum(m=2)"``, ``"alie(z=1.5)"``).

:class:`resam_flower.aggregators.base.Aggregator`, :class:`~resam_flower.aggregators.base.PreAggregator`
and :class:`resam_flower.attacks.base.Attack` derive from :class:`Component`; nothing here knows about
Flower.
"""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

import torch

__all__ = ["Component", "check_int", "check_float"]


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an ``int`` or raise a :class:`ValueError` naming the value and the bound."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite ``float`` or raise a :class:`ValueError` naming value and bound."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


class Component(ABC):  # noqa: B024 - shared base; subclasses add the abstract methods
    """``f``, diagnostics, checkpoint hooks, ``spec``/``repr`` and input validation.

    Subclasses report their constructor parameters other than ``f`` in :meth:`params`; ``spec`` and
    ``repr`` follow from it.
    """

    #: Short registry name (``"cwtm"``, ``"nnm"``, ``"alie"``...).
    name: ClassVar[str] = ""
    #: Symbol of the input's rows in error messages (``"n"`` inputs, ``"h"`` honest vectors).
    _rows: ClassVar[str] = "n"
    #: Whether :meth:`_validate` accepts an input without rows.
    _empty_ok: ClassVar[bool] = False

    def __init__(self, f: int = 0) -> None:
        self.f = check_int("f", f, low=0)
        self.last_info: dict[str, Any] = {}

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:  # noqa: B027 - optional hook, no-op for stateless components
        """Forget state carried across calls (no-op for stateless components)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (empty for stateless components)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`state_dict` returned."""

    # -- presentation -----------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor parameters other than ``f`` (used by ``repr``, ``spec`` and client configs)."""
        return {}

    @property
    def spec(self) -> str:
        """Registry spec that rebuilds this component, e.g. ``"krum(m=2)"`` or ``"alie(z=1.5)"``."""
        p = self.params()
        if not p:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in p.items()) + ")"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(f={self.f}"
            + "".join(f", {k}={v!r}" for k, v in self.params().items())
            + ")"
        )

    # -- input handling ---------------------------------------------------------------------------
    def _validate(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` if it is a floating-point ``(rows, d)`` tensor (with rows unless ``_empty_ok``)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name} expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(f"{self.name} expects an ({self._rows}, d) tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name} expects a floating-point tensor, got {x.dtype}")
        if x.shape[0] == 0 and not self._empty_ok:
            raise ValueError(f"{self.name} got no inputs ({self._rows}=0)")
        return x
