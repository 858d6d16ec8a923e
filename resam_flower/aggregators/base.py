"""Base classes of the resilient-averaging core.

Everything here is plain :mod:`torch`: a rule maps a stacked input ``x`` of shape ``(n, d)`` to one
vector ``(d,)`` on the same device and with the same dtype; a pre-aggregator maps ``(n, d)`` to
``(n', d)``. Nothing here knows about Flower.

Conventions shared by every component
-------------------------------------
* ``f`` is the number of Byzantine inputs the component must tolerate. It is fixed when the component
  is built (bad values raise :class:`ValueError` at build time) and checked against ``n`` at call
  time: a call with too few inputs raises :class:`ValueError` naming ``n``, ``f`` and the condition.
* Non-finite rows (any NaN or infinity, or a row whose squared norm overflows) are certainly faulty.
  Every rule and pre-aggregator drops them before computing, and continues with ``f - k`` where ``k``
  is the number dropped (the dropped rows were Byzantine, so at most ``f - k`` of the rest are).
  If ``k > f`` the input violates the threat model and :class:`NonFiniteInputError` is raised: a
  robust rule never returns a silent NaN. ``last_info["nonfinite_rows"]`` reports ``k``.
* ``last_info`` holds diagnostics of the latest call (e.g. the index Krum selected, whether the
  geometric median converged). ``state_dict()``/``load_state_dict()`` carry state that must survive a
  checkpoint (only stateful rules such as centered clipping and seeded pre-aggregators have any).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from .._component import Component, check_float, check_int

__all__ = [
    "Aggregator",
    "PreAggregator",
    "NonFiniteInputError",
    "check_int",
    "check_float",
]


class NonFiniteInputError(ValueError):
    """More than ``f`` input rows are non-finite: no rule can give a meaningful answer."""


class _Component(Component):
    """What rules and pre-aggregators add to :class:`~resam_flower._component.Component`: the input condition.

    ``f``, ``last_info``, the state hooks, ``params``/``spec``/``repr`` and the validation of the ``(n, d)``
    input (a floating-point tensor with at least one row) come from the shared base.
    """

    #: Human-readable input condition, e.g. ``"n > 2f"``.
    requirement: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """Smallest number of inputs ``n`` this component accepts when tolerating ``f``."""
        return 1

    def check(self, n: int, f: int | None = None) -> None:
        """Raise :class:`ValueError` if ``n`` inputs do not satisfy :attr:`requirement` for ``f``."""
        f = self.f if f is None else f
        if n < self.min_inputs(f):
            raise ValueError(
                f"{self.name} needs {self.requirement} (at least {self.min_inputs(f)} inputs for "
                f"f={f}), got n={n}"
            )


class Aggregator(_Component):
    """A resilient averaging rule ``F: (n, d) -> (d,)``.

    Subclasses implement :meth:`_aggregate` with the *effective* ``f`` (after non-finite rows were
    dropped upstream). :meth:`__call__` validates the input and checks the input condition.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._validate(x)
        self.last_info = {}
        return self._aggregate(x, self.f)

    def aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """Aggregate ``x`` tolerating ``f`` (used by pipelines, where ``f`` may have shrunk)."""
        x = self._validate(x)
        return self._aggregate(x, f)

    @abstractmethod
    def _aggregate(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """Aggregate a validated ``(n, d)`` tensor tolerating ``f`` Byzantine rows."""

    def kappa(self, n: int, f: int | None = None, d: int | None = None) -> float | None:
        """Proven (f, κ)-resilient-averaging constant, or ``None`` if none is known.

        The definition is RESAM's (Farhadkhani et al., 2022): for every honest subset ``S`` of size
        ``n - f``, ``||F(x) - mean(x_S)|| <= κ * max_{i,j in S} ||x_i - x_j||``. Coordinate-wise rules
        have constants that grow with the dimension ``d`` (pass it; ``None`` without it).
        """
        return None


class PreAggregator(_Component):
    """A pre-aggregation step ``(n, d) -> (n', d)`` composable in front of any rule."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._validate(x)
        self.last_info = {}
        return self._apply(x, self.f)[0]

    def apply(self, x: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
        """Apply to ``x`` tolerating ``f``; return the new inputs and the ``f`` that holds for them."""
        x = self._validate(x)
        return self._apply(x, f)

    @abstractmethod
    def _apply(self, x: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
        """Map validated ``(n, d)`` inputs to ``(n', d)`` and the Byzantine count ``f'`` among them."""

    def output_shape(self, n: int, f: int) -> tuple[int, int]:
        """``(n', f')`` produced from ``n`` finite inputs with ``f`` Byzantine (default: unchanged)."""
        return n, f
