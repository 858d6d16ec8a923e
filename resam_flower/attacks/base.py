"""Base class of the Byzantine attacks: honest vectors ``(h, d)`` in, Byzantine vectors ``(f, d)`` out.

Everything here is plain :mod:`torch`, on any device, preserving the input's dtype. Nothing here knows
about Flower: the simulated adversary (:mod:`.adversary`) calls an attack on the flattened honest
replies of a round, and a Byzantine client calls :meth:`Attack.corrupt_own` on its own update.

Conventions shared by every attack
----------------------------------
* ``f`` is the number of Byzantine vectors an attack forges per call (and, for the attacks whose
  formula depends on it, such as ALIE's classic ``z``, the number of Byzantine workers among
  ``n = h + f``). It is fixed at build time (bad values raise :class:`ValueError`); a call may ask for
  another count with ``attack(honest, f=k)`` when fewer Byzantine workers were sampled in a round.
* ``mu`` and ``sigma`` denote the coordinate-wise mean and standard deviation of the honest vectors.
  The standard deviation is the unbiased one (``1/(h-1)``), as in Baruch et al.'s, Shejwalkar &
  Houmansadr's and ByzFL's implementations (``1/h`` when a single honest vector is given).
* ``needs_honest``: the attack is omniscient, it needs the other workers' vectors (ALIE, IPM, MinMax...).
  Attacks without it can be run by a Byzantine node alone on its own vector (``client_side``).
* ``data_attack``: the attack poisons the training data, not the vector (label flipping); it is executed
  by the Byzantine client itself, which a simulated adversary tells with the role ``client_role``
  (``needs_honest_data``: the node computes on the honest nodes' data, as the lab's label flipping).
* ``last_info`` holds diagnostics of the latest call (e.g. the factor an optimal attack chose);
  ``state_dict()``/``load_state_dict()`` carry what must survive a checkpoint (e.g. the Gaussian attack's
  call counter, so that a resumed run draws the same noise).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from .._component import Component, check_float, check_int

__all__ = ["Attack", "check_int", "check_float", "honest_mean", "honest_std", "replicate"]


def honest_mean(honest: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise mean ``mu`` of ``(h, d)`` honest vectors, shape ``(d,)``, input dtype."""
    return honest.mean(dim=0)


def honest_std(honest: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise unbiased standard deviation ``sigma`` (``1/(h-1)``; ``1/h`` when ``h = 1``)."""
    # Two passes (mean, then squared deviations) instead of ``honest.std(dim=0)``: torch reduces over the
    # leading dimension of a tall-thin (h, d) input with a slow per-column Welford loop (about 150x a read
    # pass at h = 10, d = 431,080 on CPU); this is a few read passes and as accurate for h this small.
    h = honest.shape[0]
    dev = honest - honest.mean(dim=0)
    return dev.square_().sum(dim=0).div_(max(h - 1, 1)).sqrt_()


class Attack(Component):
    """A Byzantine attack ``A: (h, d) -> (f, d)``.

    Subclasses implement :meth:`_forge` on a validated input; :meth:`__call__` validates the input,
    handles ``f = 0`` and checks the output's shape, dtype and device. ``f``, ``last_info``, the state
    hooks, ``params``/``spec``/``repr`` and the validation of the ``(h, d)`` input (``h = 0`` allowed)
    come from :class:`~resam_flower._component.Component`.
    """

    _rows = "h"
    _empty_ok = True
    #: Omniscient: needs the honest workers' vectors (cannot run on a single node's own update).
    needs_honest: ClassVar[bool] = True
    #: Poisons data rather than vectors (executed by the Byzantine client).
    data_attack: ClassVar[bool] = False
    #: For a data attack: the role (train-config value of ``resam-byzantine``) a simulated Byzantine node
    #: is sent so that it runs the attack itself (``"lf"``, ``"lf-lab"``); ``None`` for vector attacks.
    client_role: ClassVar[str | None] = None
    #: For a data attack: the Byzantine node computes on the *honest* nodes' data (the simulated server
    #: must send it their partitions, ``resam-honest-partitions``); simulation only.
    needs_honest_data: ClassVar[bool] = False
    #: Other accepted names of constructor parameters (e.g. ByzFL's ``tau``) -> the canonical name.
    param_aliases: ClassVar[dict[str, str]] = {}

    def __init__(self, f: int = 1) -> None:
        super().__init__(f)

    @property
    def client_side(self) -> bool:
        """Whether a Byzantine node can run this attack on its own update (see :meth:`corrupt_own`)."""
        return not self.needs_honest

    # -- forging ----------------------------------------------------------------------------------
    def __call__(self, honest: torch.Tensor, f: int | None = None) -> torch.Tensor:
        """Forge ``f`` Byzantine vectors (default: the ``f`` given at build time) from ``honest``."""
        honest = self._validate(honest)
        k = self.f if f is None else check_int("f", f, low=0)
        self.last_info = {}
        h, d = honest.shape
        if k == 0:
            return honest.new_empty((0, d))
        if h == 0 and self.needs_honest:
            raise ValueError(f"{self.name} needs at least one honest vector, got h=0")
        out = self._forge(honest, k)
        if out.shape != (k, d) or out.dtype != honest.dtype or out.device != honest.device:
            raise RuntimeError(  # a bug in the attack, not a user error
                f"{self.name} returned {tuple(out.shape)} {out.dtype} on {out.device}, "
                f"expected {(k, d)} {honest.dtype} on {honest.device}"
            )
        return out

    @abstractmethod
    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        """Forge ``(f, d)`` vectors from a validated ``(h, d)`` honest tensor (``f >= 1``)."""

    def corrupt_own(self, own: torch.Tensor) -> torch.Tensor:
        """Corrupt a Byzantine node's own update (any shape), for attacks with :attr:`client_side`.

        The node's own vector plays the role of the honest mean: ``sf`` sends ``-own``, ``gaussian``
        sends ``own + sigma * N(0, I)``, ``inf`` sends ``+inf``; a data attack returns ``own``
        unchanged (the poisoning happened in the data).
        """
        if not self.client_side:
            raise ValueError(
                f"{self.name} is omniscient (needs the honest workers' vectors); it cannot run on a "
                f"Byzantine node's own update"
            )
        if not isinstance(own, torch.Tensor) or not own.is_floating_point():
            raise TypeError(f"{self.name} expects a floating-point torch.Tensor, got {own!r:.80}")
        return self(own.reshape(1, -1), f=1).reshape(own.shape)


def replicate(v: torch.Tensor, f: int) -> torch.Tensor:
    """``f`` copies of the vector ``v``, as a contiguous ``(f, d)`` tensor."""
    return v.unsqueeze(0).expand(f, -1).contiguous()
