"""The simulated adversary: which nodes are Byzantine, and what they send. Knows nothing of Flower.

In simulation the adversary is omniscient (standard practice, e.g. ByzFL, Blades): each round the server
side hands it the honest replies, flattened to an ``(h, d)`` tensor, and it forges the Byzantine
replies. The aggregation rule is never told who is Byzantine; only the adversary knows.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import torch

from .base import Attack, check_int
from .registry import accepted, build, resolve

__all__ = ["Adversary"]


class Adversary:
    """Choose ``num_byzantine`` Byzantine nodes once (seeded, recorded) and forge their vectors.

    Parameters
    ----------
    attack : str or Attack
        An attack name for :func:`resam_flower.attacks.build` (built with ``f = num_byzantine`` and
        ``attack_params``), or a built :class:`Attack` whose ``f`` equals ``num_byzantine``.
    num_byzantine : int
        Number of Byzantine nodes in the whole population (``>= 0``).
    seed : int (default: 0)
        Seeds the choice of nodes and, if the attack is random and given no ``seed`` of its own, the attack.
    **attack_params
        Parameters of the attack (only with an attack name).

    Examples
    --------
    >>> adv = Adversary("alie", num_byzantine=2, seed=1)
    >>> byz = adv.choose([101, 102, 103, 104, 105])          # fixed from now on, checkpointed
    >>> forged = adv.forge(torch.randn(3, 10))                # (2, 10)
    """

    def __init__(self, attack: str | Attack, num_byzantine: int, seed: int = 0, **attack_params: Any) -> None:
        self.num_byzantine = check_int("num_byzantine", num_byzantine, low=0)
        self.seed = check_int("seed", seed, low=0)
        if isinstance(attack, Attack):
            if attack_params:
                raise ValueError(f"parameters {sorted(attack_params)} given with an already built attack "
                                 f"{attack.spec}")
            if attack.f != self.num_byzantine:
                raise ValueError(f"attack {attack.spec} has f={attack.f} but num_byzantine={num_byzantine}")
            self.attack = attack
        else:
            if "seed" in accepted(resolve(attack)) and "seed" not in attack_params:
                attack_params["seed"] = self.seed
            self.attack = build(attack, f=self.num_byzantine, **attack_params)
        self._chosen: list[int] | None = None
        self._population: list[int] | None = None

    # -- who is Byzantine ---------------------------------------------------------------------------
    def choose(self, node_ids: Iterable[int]) -> list[int]:
        """The Byzantine nodes among ``node_ids`` (sorted).

        The first call draws ``num_byzantine`` of the given ids, uniformly with the adversary's seed, from
        their sorted list (so the order of ``node_ids`` does not matter) and records the choice. Later
        calls return the recorded choice restricted to the ids given (pass the whole population on the
        first call, e.g. every connected node, and the sampled nodes of a round afterwards).
        """
        ids = sorted(set(self._check_ids(node_ids)))
        if self._chosen is None:
            if self.num_byzantine > len(ids):
                raise ValueError(
                    f"cannot choose num_byzantine={self.num_byzantine} Byzantine nodes among {len(ids)} nodes"
                )
            self._population = ids
            self._chosen = sorted(random.Random(self.seed).sample(ids, self.num_byzantine))
        present = set(ids)
        return [i for i in self._chosen if i in present]

    @property
    def chosen(self) -> list[int] | None:
        """The recorded Byzantine node ids, or ``None`` before the first :meth:`choose`."""
        return None if self._chosen is None else list(self._chosen)

    def is_byzantine(self, node_id: int) -> bool:
        """Whether ``node_id`` was chosen as Byzantine (``False`` before the first :meth:`choose`)."""
        return self._chosen is not None and node_id in self._chosen

    @staticmethod
    def _check_ids(node_ids: Iterable[int]) -> list[int]:
        ids = list(node_ids)
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"node ids must be integers, got {i!r}")
        return ids

    # -- what they send -------------------------------------------------------------------------------
    def forge(self, honest: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """The Byzantine vectors ``(count, d)`` for the honest vectors ``(h, d)`` of this round.

        ``count`` (default ``num_byzantine``) is how many Byzantine nodes replied this round, at most
        ``num_byzantine``. Same dtype and device as ``honest``.
        """
        count = self.num_byzantine if count is None else check_int("count", count, low=0,
                                                                    high=self.num_byzantine)
        return self.attack(honest, f=count)

    @property
    def data_attack(self) -> bool:
        """Whether the attack poisons data: Byzantine clients must run it; :meth:`forge` is not used."""
        return self.attack.data_attack

    @property
    def client_role(self) -> str:
        """The role a simulated Byzantine node is sent (``resam-byzantine``): the data attack's own role
        (``"lf"``, ``"lf-lab"``), else ``"omniscient"`` (the node does not train; its reply is forged)."""
        return self.attack.client_role or "omniscient"

    @property
    def needs_honest_data(self) -> bool:
        """Whether the Byzantine nodes compute on the honest nodes' data (``lf-lab``): the server must send
        them the honest nodes' partitions (``resam-honest-partitions``) and every node its partition."""
        return self.attack.needs_honest_data

    def client_config(self) -> dict[str, Any]:
        """What a Byzantine client needs to run a non-omniscient attack: ``{"attack": name, **params}``.

        Values are scalars (str, int, float, bool), as a Flower ``ConfigRecord`` requires. Raises
        :class:`ValueError` for omniscient attacks, which a client cannot run alone.
        """
        if not self.attack.client_side:
            raise ValueError(f"{self.attack.name} is omniscient: only the simulated adversary can run it")
        return {"attack": self.attack.name, **self.attack.params()}

    def describe(self) -> str:
        """One line for logs."""
        who = "not chosen yet" if self._chosen is None else f"nodes {self._chosen}"
        return f"{self.attack.spec} by {self.num_byzantine} Byzantine node(s), seed {self.seed}, {who}"

    def __repr__(self) -> str:
        return f"Adversary({self.attack!r}, num_byzantine={self.num_byzantine}, seed={self.seed})"

    # -- checkpoint ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Configuration, recorded choice and the attack's state (plain Python values)."""
        return {
            "attack": self.attack.spec,
            "num_byzantine": self.num_byzantine,
            "seed": self.seed,
            "chosen": self.chosen,
            "population": None if self._population is None else list(self._population),
            "attack_state": self.attack.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the recorded choice and the attack's state; the configuration must match."""
        for key in ("num_byzantine", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"checkpoint has {key}={state[key]!r} but this adversary has "
                                 f"{key}={getattr(self, key)!r}")
        chosen = state.get("chosen")
        if chosen is not None:
            chosen = sorted(self._check_ids(chosen))
            if len(chosen) != self.num_byzantine:
                raise ValueError(f"checkpoint records {len(chosen)} Byzantine nodes, expected "
                                 f"num_byzantine={self.num_byzantine}")
        self._chosen = chosen
        pop = state.get("population")
        self._population = None if pop is None else list(pop)
        self.attack.load_state_dict(state.get("attack_state", {}))
