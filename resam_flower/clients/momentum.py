"""``momentum_mod``: turns any Flower ClientApp into a RESAM worker (momentum kept at the worker).

The shape follows Flower's ``fixedclipping_mod``: the mod wraps the ClientApp's train handler, reads
what the inner app replies, and replaces the reply's ArrayRecord. Here the reply becomes the worker's
local momentum

.. math::  m_t = \\beta\\, m_{t-1} + (1 - \\beta)\\, g_t, \\qquad m_0 = 0,

kept across rounds in ``context.state`` (an :class:`~flwr.app.ArrayRecord` under ``state_key``), so it
survives between rounds in simulation and on a real SuperNode alike.

The update direction ``g_t`` comes from the inner reply:

* if the reply's MetricRecord has ``resam-gradient`` = 1, its ArrayRecord *is* a gradient (the ready
  worker :mod:`resam_flower.clients.worker` does this: one mini-batch gradient, RESAM's DSGD);
* otherwise the reply holds locally trained weights, as from any FedAvg client, and
  ``g_t = (θ_global - θ_local) / η_local`` with ``η_local`` from the reply's ``local-lr`` metric, else the
  mod's ``local_lr``, else the round config's ``lr``. For K local SGD steps this is the sum of the K
  gradients.

Surviving a crash (optional, off by default): with a *momentum directory* — the mod's ``state_dir``, else
the node config's ``resam-momentum-dir``, else the train config's ``resam-momentum-dir`` (the default app's
server sends one when checkpointing is on) — the mod also writes :math:`m_t` to a per-node, per-round file
and reads it back when memory has none for the lineage of the run (see
:mod:`resam_flower.clients.momentum_store`). A killed simulation or a restarted SuperNode then resumes
with the momentum it had, and a server resumed from its checkpoint of round ``K`` gets each worker's
momentum of its last round ``<= K``, not a later one.
"""

from __future__ import annotations

import os
from logging import WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore import log

from ..aggregators.base import check_float
from ..flat import FlatSpec
from .momentum_store import CHECKPOINT_ROUND_KEY, LINEAGE_KEY, MOMENTUM_DIR_KEY, Lineage, MomentumStore

__all__ = ["momentum_mod", "MOMENTUM_STATE_KEY", "GRADIENT_FLAG"]

MOMENTUM_STATE_KEY = "resam-momentum"
GRADIENT_FLAG = "resam-gradient"


def _single(records: dict, what: str) -> tuple[str, object]:
    if len(records) != 1:
        raise ValueError(f"momentum_mod expects exactly one {what}, got {len(records)}")
    return next(iter(records.items()))


def _error_reply(msg: Message, reason: str) -> Message:
    from flwr.app import Error
    from flwr.common.constant import ErrorCode

    log(WARNING, "momentum_mod: %s", reason)
    return Message(
        Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"momentum_mod: {reason}"), reply_to=msg
    )


def momentum_mod(
    beta: float = 0.9,
    *,
    local_lr: float | None = None,
    state_key: str = MOMENTUM_STATE_KEY,
    state_dir: str | os.PathLike | None = None,
) -> Mod:
    """Build the mod; use as ``ClientApp(mods=[momentum_mod(0.9)])``.

    Parameters
    ----------
    beta
        Momentum coefficient β in [0, 1). β = 0 replies with the plain gradient (robust DSGD).
    local_lr
        Learning rate of a weights-returning inner app, when its reply does not report ``local-lr``.
    state_key
        Key of the momentum in ``context.state``.
    state_dir
        Momentum directory (crash-safe copy of the momentum); ``None`` looks for ``resam-momentum-dir`` in the
        node config, then in the train config, and keeps the momentum in memory only if neither has one.
    """
    beta = check_float("beta", beta, low=0.0, high=1.0, high_open=True)
    if local_lr is not None:
        local_lr = check_float("local_lr", local_lr, low=0.0, low_open=True)

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        try:
            _, global_rec = _single(msg.content.array_records, "ArrayRecord in the train message")
        except ValueError as exc:
            return _error_reply(msg, str(exc))
        config = next(iter(msg.content.config_records.values()), {})
        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        try:
            rkey, reply_rec = _single(reply.content.array_records, "ArrayRecord in the inner reply")
        except ValueError as exc:
            return _error_reply(msg, str(exc))
        spec = FlatSpec.from_record(global_rec)
        metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
        g, reason = spec.read(reply_rec, check_finite=True)
        if g is None:
            return _error_reply(msg, f"inner reply does not match the model: {reason}")
        if float(metrics.get(GRADIENT_FLAG, 0)) != 1.0:
            eta = metrics.get("local-lr", local_lr if local_lr is not None else config.get("lr"))
            if eta is None or float(eta) <= 0:
                return _error_reply(msg, "weights reply without a local learning rate (local-lr)")
            g = (spec.flatten(global_rec) - g) / float(eta)
        store = _store(ctxt, config, state_dir)
        if store is None:
            m = _load_momentum(ctxt, state_key, spec)
        else:
            m = _load_stored_momentum(ctxt, state_key, spec, *store)
        m.mul_(beta).add_(g, alpha=1.0 - beta)
        state = spec.unflatten(m, like=global_rec)
        ctxt.state[state_key] = state
        if store is not None:
            _save_stored_momentum(ctxt, state_key, m, *store)
        out = reply.content
        out.array_records[rkey] = ArrayRecord(dict(state.items()))  # same (immutable) Arrays, own record
        for k, v in list(out.metric_records.items()):
            v[GRADIENT_FLAG] = 1
            v["momentum-norm"] = float(torch.linalg.vector_norm(m))
            out.metric_records[k] = v
        return reply

    return mod


def _load_momentum(ctxt: Context, key: str, spec: FlatSpec) -> torch.Tensor:
    """The stored momentum as a vector, or zeros (first round, or the model's layout changed)."""
    if key in ctxt.state.array_records:
        vec, reason = spec.read(ctxt.state.array_records[key], check_finite=True)
        if vec is not None:
            return vec
        log(WARNING, "momentum_mod: stored momentum discarded (%s); starting from zero", reason)
    return torch.zeros(spec.dim)


# -- optional crash-safe copy ------------------------------------------------------------------------
def _store(ctxt: Context, config, state_dir) -> tuple[MomentumStore, int, Lineage, int | None] | None:
    """The node's momentum store, the round, the lineage and the server's checkpoint round (or ``None``)."""
    root = state_dir or ctxt.node_config.get(MOMENTUM_DIR_KEY) or config.get(MOMENTUM_DIR_KEY)
    if not root:
        return None
    server_round = int(config.get("server-round", 0))
    if server_round < 1:
        log(WARNING, "momentum_mod: no server-round in the train config; momentum kept in memory only")
        return None
    if LINEAGE_KEY in config:
        lineage = Lineage.parse(config[LINEAGE_KEY])
    else:  # no server lineage: files are valid within this run only (a SuperNode restart, not a new run)
        lineage = Lineage.fresh(f"run{int(ctxt.run_id) & 0xFFFFFFFF:x}")
    ckpt = config.get(CHECKPOINT_ROUND_KEY)
    key = ctxt.node_config.get("partition-id", ctxt.node_id)
    return MomentumStore(str(root), key), server_round, lineage, None if ckpt is None else int(ckpt)


def _load_stored_momentum(
    ctxt: Context, key: str, spec: FlatSpec, store: MomentumStore, rnd: int, lineage: Lineage, _ckpt
) -> torch.Tensor:
    """m of this node's newest round before ``rnd`` in the lineage: from memory if it is that, else disk."""
    latest = store.latest(rnd, lineage)
    tag = ctxt.state.config_records.get(key + "-round")
    if tag is not None and key in ctxt.state.array_records:
        mem_round = int(tag["round"])
        usable = mem_round < rnd and lineage.generation_at(mem_round) == tag["generation"]
        if usable and (latest is None or mem_round >= latest[0]):
            vec, _ = spec.read(ctxt.state.array_records[key], check_finite=True)
            if vec is not None:
                return vec
    if latest is not None:
        vec = store.read(latest[1], spec.dim)
        if vec is not None:
            return vec
        log(
            WARNING,
            "momentum_mod: momentum file %s unreadable or of another model; starting from zero",
            latest[1],
        )
    return torch.zeros(spec.dim)


def _save_stored_momentum(
    ctxt: Context, key: str, m: torch.Tensor, store: MomentumStore, rnd: int, lineage: Lineage, ckpt
) -> None:
    store.write(rnd, lineage.current, m)
    ctxt.state[key + "-round"] = ConfigRecord({"round": rnd, "generation": lineage.current})
    store.prune(lineage, ckpt)
