"""A worker's momentum on disk, so that it survives a crash of the process that holds ``context.state``.

``momentum_mod`` keeps :math:`m_t` in ``context.state``: in memory, in the simulation process (Flower keeps
the nodes' contexts there) or in the SuperNode process. A killed simulation, or a restarted SuperNode, loses
it. With a *momentum directory* the mod also writes :math:`m_t` to
``<dir>/node-<key>/round-<t>.<generation>.npy`` (atomically: temporary file, fsync, rename) and reads it back
when memory has no usable copy.

Why files are tagged by round and *generation*: after a server restart from its checkpoint of round ``K``,
rounds ``K+1, K+2, ...`` are replayed. Files those rounds wrote before the crash belong to a discarded future
and must not be read. Every start of the server (fresh or resumed) draws a new generation token, and the
server sends the run's *lineage* — which generation produced which rounds, ``"<gen>:<first round>,..."`` —
in every train config. A file of round ``r`` is valid only if its generation is the lineage's generation
at round ``r``. The worker uses the newest valid file of a round before the current one, and keeps at
most two files (:meth:`MomentumStore.prune`): the newest, and the newest of a round up to the server's
latest checkpoint.

Config keys (train config, from the server; the node config may set ``resam-momentum-dir`` itself):
``resam-momentum-dir``, ``resam-lineage``, ``resam-checkpoint-round``.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import protocol as P
from .._files import atomic_open

__all__ = [
    "MOMENTUM_DIR_KEY",
    "LINEAGE_KEY",
    "CHECKPOINT_ROUND_KEY",
    "Lineage",
    "MomentumStore",
    "new_generation",
]

MOMENTUM_DIR_KEY = P.MOMENTUM_DIR  # the keys themselves live in resam_flower.protocol
LINEAGE_KEY = P.LINEAGE
CHECKPOINT_ROUND_KEY = P.CHECKPOINT_ROUND

_FILE = re.compile(r"^round-(\d{8})\.([0-9a-z]+)\.npy$")


def new_generation() -> str:
    """A fresh generation token (8 hex digits), drawn from the OS: unique per server start."""
    return secrets.token_hex(4)


@dataclass(frozen=True)
class Lineage:
    """Which server generation produced which rounds: ``((generation, first_round), ...)``, increasing."""

    segments: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        firsts = [first for _, first in self.segments]
        if not self.segments or firsts[0] != 1 or firsts != sorted(set(firsts)):
            raise ValueError(f"lineage must start at round 1 with increasing rounds, got {self.segments}")
        for gen, _ in self.segments:
            if not re.fullmatch(r"[0-9a-z]+", gen):
                raise ValueError(f"lineage generation must be lower-case alphanumeric, got {gen!r}")

    @classmethod
    def fresh(cls, generation: str | None = None) -> Lineage:
        """The lineage of a run started from scratch."""
        return cls(((generation or new_generation(), 1),))

    @classmethod
    def parse(cls, text: str) -> Lineage:
        """Inverse of :meth:`__str__` (``"a1b2c3d4:1,0f0e0d0c:11"``)."""
        try:
            pairs = [part.split(":") for part in str(text).split(",")]
            return cls(tuple((gen.strip(), int(first)) for gen, first in pairs))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad lineage {text!r}: expected 'generation:first_round,...'") from exc

    def __str__(self) -> str:
        return ",".join(f"{gen}:{first}" for gen, first in self.segments)

    @property
    def current(self) -> str:
        """The generation that produces the rounds from the latest restart on."""
        return self.segments[-1][0]

    def generation_at(self, server_round: int) -> str:
        """The generation whose files of ``server_round`` are valid."""
        gen = self.segments[0][0]
        for g, first in self.segments:
            if first <= server_round:
                gen = g
        return gen

    def resumed(self, after_round: int, generation: str | None = None) -> Lineage:
        """The lineage of a restart from the checkpoint of round ``after_round`` (a new generation)."""
        kept = tuple((g, first) for g, first in self.segments if first <= after_round)
        return Lineage(kept + ((generation or new_generation(), after_round + 1),))


class MomentumStore:
    """The momentum files of one node, under ``root/node-<key>/``.

    Parameters
    ----------
    root
        The momentum directory (shared by all nodes of a simulation; one per SuperNode in deployment).
    node_key
        Stable name of the node: its ``partition-id`` when the node config has one, else its node id.
    """

    def __init__(self, root: str | os.PathLike, node_key: int | str) -> None:
        key = str(node_key)
        if not re.fullmatch(r"-?[0-9A-Za-z_]+", key):
            raise ValueError(f"node key must be alphanumeric, got {key!r}")
        self.dir = Path(root) / f"node-{key}"

    def files(self) -> list[tuple[int, str, Path]]:
        """``(round, generation, path)`` of every momentum file, by round."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in self.dir.iterdir():
            match = _FILE.match(path.name)
            if match:
                out.append((int(match.group(1)), match.group(2), path))
        return sorted(out)

    def latest(self, before_round: int, lineage: Lineage) -> tuple[int, Path] | None:
        """Newest valid file of a round ``< before_round``: ``(round, path)`` or ``None``."""
        valid = [(r, p) for r, g, p in self.files() if r < before_round and lineage.generation_at(r) == g]
        return valid[-1] if valid else None

    @staticmethod
    def read(path: Path, dim: int) -> torch.Tensor | None:
        """The stored vector if it is a finite float32 vector of length ``dim`` (else ``None``)."""
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.shape != (dim,) or arr.dtype != np.float32 or not np.isfinite(arr).all():
            return None
        return torch.from_numpy(np.array(arr))

    def write(self, server_round: int, generation: str, vec: torch.Tensor) -> Path:
        """Write ``vec`` as the momentum of ``server_round`` (atomic: readers see the old or the new file)."""
        path = self.dir / f"round-{server_round:08d}.{generation}.npy"
        with atomic_open(path, fsync=True) as fh:
            np.save(fh, vec.detach().to("cpu", torch.float32).numpy(), allow_pickle=False)
        return path

    def prune(self, lineage: Lineage, checkpoint_round: int | None) -> int:
        """Delete the files no round and no restart can need; return how many.

        At most two files stay, both valid in ``lineage``: the newest one (the next round reads it) and the
        newest one of a round ``<= checkpoint_round`` (a restart from the server's latest checkpoint replays
        round ``checkpoint_round + 1`` from it; the server never restarts from an older round). Everything
        else goes: invalid files (a discarded future) and valid files between those two, which a restart
        would replace in a new generation. Without a checkpoint yet (``None`` or ``0``) a restart starts from
        scratch, so only the newest file stays.
        """
        files = self.files()
        valid = [(r, p) for r, g, p in files if lineage.generation_at(r) == g]
        keep: set[Path] = set()
        if valid:
            keep.add(valid[-1][1])
            limit = checkpoint_round or 0
            resumable = [p for r, p in valid if r <= limit]
            if resumable:
                keep.add(resumable[-1])
        doomed = [p for _, _, p in files if p not in keep]
        for path in doomed:
            path.unlink(missing_ok=True)
        return len(doomed)
