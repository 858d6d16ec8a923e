"""Byzantine behaviour of a single node on real devices: corrupt its own update, or poison its labels.

A Byzantine client has no access to the other workers' vectors, so only the attacks that need none are
available here (``sf``, ``gaussian``, ``inf``, ``lf``; see :attr:`Attack.client_side`). These functions
are pure torch and know nothing of Flower; the ClientApp side calls them on its flattened update.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack
from .label_flip import flip_labels
from .registry import build, resolve

__all__ = ["corrupt_own_update", "flip_labels", "client_side_attacks", "is_data_attack"]


def client_side_attacks() -> list[str]:
    """Names of the attacks a Byzantine node can run on its own (not omniscient)."""
    from .registry import ATTACKS

    return sorted(n for n in ATTACKS if not resolve(n).needs_honest)


def is_data_attack(name: str) -> bool:
    """Whether ``name`` poisons the training data (the client must call :func:`flip_labels`)."""
    return resolve(name).data_attack


def corrupt_own_update(name: str | Attack, own: torch.Tensor, **params: Any) -> torch.Tensor:
    """What a Byzantine node sends instead of its own update ``own`` (any shape; same shape, dtype, device).

    ``sf`` -> ``-own``; ``gaussian`` -> ``own + sigma * N(0, I)`` (pass ``sigma`` and a ``seed`` that
    changes every round, e.g. derived from the node id and the round, otherwise each call draws the same
    noise); ``inf`` -> ``+inf`` everywhere; ``lf`` -> ``own`` unchanged (its gradient was already computed
    on flipped labels, see :func:`flip_labels`).

    Raises :class:`ValueError` for an unknown attack, a bad parameter, or an omniscient attack.
    """
    attack = build(name, f=1, **params) if not isinstance(name, Attack) else name
    return attack.corrupt_own(own)
