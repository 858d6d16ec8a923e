"""Checkpoint and resume of a RESAM run: one atomic server checkpoint every ``K`` rounds.

A checkpoint of round ``K`` (``torch.save`` of plain values and tensors) holds

* the global model :math:`\\theta_K` (every array of the ``ArrayRecord``, key order and dtypes kept);
* ``K`` and :meth:`ResilientAveraging.state_dict`: the node-sampling RNG, the rule's state (e.g. centered
  clipping's centre, the generators of bucketing and DnC), the simulated adversary's choice of nodes and
  its attack's state, the exclusion counts, the round log and the node ids connected at round ``K``;
* the server learning-rate schedule (described, to refuse a resume under another one) and the run config;
* torch's global RNG state (anything server-side that draws from it continues identically);
* the run's *lineage* (:class:`~resam_flower.clients.momentum_store.Lineage`): which server generation
  produced which rounds, so that workers pick the momentum of round ``<= K`` and not a later one;
* ``extra``: what the app adds (the default app: its centralised evaluations so far).

It is written to a temporary file in the same folder, flushed and fsynced, then renamed over the previous
one (``os.replace`` is atomic on POSIX): a crash at any moment leaves the previous or the new checkpoint,
never a torn one. It is read with ``torch.load(weights_only=True)``: a checkpoint cannot execute code.

Flower's :meth:`~flwr.serverapp.strategy.Strategy.start` numbers rounds from 1; :meth:`Checkpointer.resume`
sets the strategy's ``round_offset`` to ``K`` so that round numbers, the lr schedule and the workers'
mini-batch streams continue where they stopped; the caller runs the remaining ``T - K`` rounds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from .._files import atomic_open
from ..aggregators.base import check_int
from ..clients.momentum_store import CHECKPOINT_ROUND_KEY, LINEAGE_KEY, MOMENTUM_DIR_KEY, Lineage
from .rounds import StrategyWrapper, core_of

__all__ = [
    "Checkpoint",
    "Checkpointer",
    "Checkpointing",
    "model_digest",
    "stable_simulation_node_ids",
    "FORMAT",
]

#: Version of the checkpoint layout.
FORMAT = 1


def _to_tensors(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.array(arr.numpy())) for key, arr in arrays.items()}


def _to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({key: Array(t.numpy()) for key, t in tensors.items()})


def model_digest(arrays: ArrayRecord) -> str:
    """SHA-256 of a model's keys, dtypes, shapes and bytes: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for key, arr in arrays.items():
        nd = np.ascontiguousarray(arr.numpy())
        h.update(f"{key}|{nd.dtype.str}|{nd.shape}|".encode())
        h.update(nd.tobytes())
    return h.hexdigest()


@dataclass
class Checkpoint:
    """What :meth:`Checkpointer.load` returns."""

    round: int
    arrays: ArrayRecord
    strategy: dict[str, Any]
    lineage: Lineage
    schedule: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Write a checkpoint every ``every`` rounds (and at ``last_round``); resume from one.

    Parameters
    ----------
    path
        The checkpoint file (the default app: ``<results-dir>/<run-name>/checkpoint.pt``).
    every
        ``K``: write after rounds ``K, 2K, ...`` (``0``: never, except at ``last_round``).
    last_round
        Also write after this round (the run's last), so that a finished run can be inspected or extended.
    momentum_dir
        Sent to the workers as ``resam-momentum-dir``: where ``momentum_mod`` keeps a crash-safe copy of each
        worker's momentum (``None``: workers keep it in memory, or where their node config says).
    config
        The run config, stored and compared on resume (see :meth:`check_config`).
    extra
        A dict the app keeps up to date; stored as is (plain values and tensors only).
    """

    #: Run-config keys that may differ between the interrupted and the resuming run (another ``device``
    #: resumes the run, but not bit-identically).
    RESUMABLE_CHANGES = (
        "resume",
        "num-server-rounds",
        "checkpoint-every",
        "eval-every",
        "results-dir",
        "device",
    )

    def __init__(
        self,
        path: str | os.PathLike,
        every: int,
        *,
        last_round: int | None = None,
        momentum_dir: str | os.PathLike | None = None,
        config: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.every = check_int("checkpoint every", every, low=0)
        self.last_round = last_round
        self.momentum_dir = None if momentum_dir is None else str(momentum_dir)
        self.config = dict(config or {})
        self.extra = extra if extra is not None else {}
        self.lineage = Lineage.fresh()
        #: round of the latest checkpoint written or resumed from (0: none)
        self.saved_round = 0

    # -- strategy hooks -----------------------------------------------------------------------------
    def train_config(self) -> dict[str, Any]:
        """Sent to the workers every round: the lineage, the latest checkpoint round, the momentum folder."""
        out: dict[str, Any] = {LINEAGE_KEY: str(self.lineage), CHECKPOINT_ROUND_KEY: self.saved_round}
        if self.momentum_dir is not None:
            out[MOMENTUM_DIR_KEY] = self.momentum_dir
        return out

    def end_of_round(self, strategy: Any, server_round: int, arrays: ArrayRecord) -> None:
        """Write the checkpoint of ``server_round`` if it is due."""
        due = self.every and server_round % self.every == 0
        if due or server_round == self.last_round:
            self.save(strategy, server_round, arrays)

    # -- files --------------------------------------------------------------------------------------
    def save(self, strategy: Any, server_round: int, arrays: ArrayRecord) -> Path:
        """Write the checkpoint of ``server_round`` atomically; return its path."""
        payload = {
            "format": FORMAT,
            "round": int(server_round),
            "arrays": _to_tensors(arrays),
            "strategy": strategy.state_dict(),
            "schedule": strategy.schedule.describe(),
            "lineage": str(self.lineage),
            "config": self.config,
            "torch_rng": torch.get_rng_state(),
            "extra": self.extra,
        }
        with atomic_open(self.path, fsync=True) as fh:
            torch.save(payload, fh)
        _fsync_dir(self.path.parent)
        self.saved_round = int(server_round)
        return self.path

    @staticmethod
    def load(path: str | os.PathLike) -> Checkpoint:
        """Read a checkpoint (no code execution: ``weights_only``); raise ``ValueError`` if it is not one."""
        try:
            raw = torch.load(Path(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file must say so, whatever the cause
            raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{path} is not a resam-flower checkpoint of format {FORMAT}")
        missing = [k for k in ("round", "arrays", "strategy", "lineage") if k not in raw]
        if missing:
            raise ValueError(f"checkpoint {path} is incomplete: no {', '.join(missing)}")
        try:
            return Checkpoint(
                round=int(raw["round"]),
                arrays=_to_record(raw["arrays"]),
                strategy=raw["strategy"],
                lineage=Lineage.parse(raw["lineage"]),
                schedule=raw.get("schedule", ""),
                config=raw.get("config", {}),
                torch_rng=raw.get("torch_rng"),
                extra=raw.get("extra", {}),
            )
        except Exception as exc:  # noqa: BLE001 - any malformed field is a damaged checkpoint
            raise ValueError(f"checkpoint {path} is damaged: {type(exc).__name__}: {exc}") from exc

    # -- resume -------------------------------------------------------------------------------------
    def check_config(self, saved: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the keys whose values differ from the checkpoint's run config."""
        keys = (set(saved) | set(self.config)) - set(self.RESUMABLE_CHANGES)
        diff = sorted(k for k in keys if saved.get(k) != self.config.get(k))
        if diff:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {self.config.get(k)!r}" for k in diff[:6])
            raise ValueError(f"cannot resume {self.path}: the run config changed ({shown})")

    def resume(self, strategy: Any, ckpt: Checkpoint) -> ArrayRecord:
        """Restore ``strategy`` from ``ckpt``; return the model to start from.

        Sets ``strategy.round_offset = K``, restores its state and torch's RNG, and starts a new generation
        of the lineage from round ``K + 1``. Raises ``ValueError`` if the run config or the lr schedule
        differ from the checkpoint's.
        """
        self.check_config(ckpt.config)
        if ckpt.schedule and ckpt.schedule != strategy.schedule.describe():
            raise ValueError(
                f"cannot resume {self.path}: lr schedule {strategy.schedule.describe()} differs from the "
                f"checkpoint's {ckpt.schedule}"
            )
        strategy.load_state_dict(ckpt.strategy)
        strategy.round_offset = ckpt.round
        if ckpt.torch_rng is not None:
            torch.set_rng_state(ckpt.torch_rng)
        self.lineage = ckpt.lineage.resumed(ckpt.round)
        self.saved_round = ckpt.round
        return ckpt.arrays


class Checkpointing(StrategyWrapper):
    """Wrap any RESAM strategy with checkpoints: ``checkpointer`` writes every ``K`` rounds, and resumes.

    Every train message also carries the checkpointer's keys (the run's lineage, the latest checkpoint round,
    the momentum folder), so that ``momentum_mod`` keeps a crash-safe copy of each worker's momentum and
    reads the right one after a resume. The checkpoint of a round is written after its last strategy hook
    (``aggregate_evaluate``) and holds the wrapped strategy's whole state (the adversary's included).
    """

    def __init__(self, strategy: Any, checkpointer: Checkpointer) -> None:
        super().__init__(strategy)
        self.checkpointer = checkpointer

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001 - Strategy's signature
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        extra = self.checkpointer.train_config()
        for msg in messages:
            key, cfg = next(iter(msg.content.config_records.items()))
            msg.content.config_records[key] = ConfigRecord({**dict(cfg), **extra})
        return messages

    def aggregate_evaluate(self, server_round, replies):  # noqa: ANN001
        out = self.strategy.aggregate_evaluate(server_round, replies)
        current = core_of(self).current_arrays
        if current is not None:
            self.checkpointer.end_of_round(self.strategy, server_round + self.round_offset, current)
        return out

    def resume(self, ckpt: Checkpoint) -> ArrayRecord:
        """Restore the wrapped strategy from ``ckpt`` (:meth:`Checkpointer.resume`); return the model."""
        return self.checkpointer.resume(self, ckpt)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


from ..compat import stable_simulation_node_ids  # noqa: E402 - re-exported where it was
