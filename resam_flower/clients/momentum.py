"""``momentum_mod``: turns any Flower ClientApp into a RESAM worker (momentum kept at the worker).

The shape follows Flower's ``fixedclipping_mod``: the mod wraps the ClientApp's train handler, reads
what the inner app replies, and replaces the reply's ArrayRecord. Here the reply becomes the worker's
local momentum

.. math::  m_t = \\beta\\, m_{t-1} + (1 - \\beta)\\, g_t, \\qquad m_0 = 0,

kept across rounds in ``context.state`` (an :class:`~flwr.app.ArrayRecord` under ``state_key``), so it
survives between rounds in simulation and on a real SuperNode alike.

The update direction ``g_t`` comes from the inner reply:

* if the reply's MetricRecord has ``resam-gradient`` = 1, its ArrayRecord *is* a gradient (the default app's
  worker does this: one mini-batch gradient, RESAM's DSGD);
* otherwise the reply holds locally trained weights, as from any FedAvg client, and
  ``g_t = (θ_global - θ_local) / η_local`` with ``η_local`` from the reply's ``local-lr`` metric, else the
  mod's ``local_lr``, else your train config's ``lr`` (read, never written: the server sends its own rate
  as ``resam-server-lr``). For K local SGD steps this is the sum of the K gradients.

Only *parameters* become momentum. The model's float buffers (BatchNorm's running statistics; the keys the
server lists in ``resam-buffers``, else PyTorch's BatchNorm names) are statistics, not gradients: the reply
carries the worker's own values of them (the inner reply's, or the global ones if it has none) and the
server takes their median. In ``model`` mode (``resam-mode`` = ``"model"`` in the train config) the mod lets
the inner reply through unchanged, so one ClientApp serves both modes. Every reply it makes says what it
holds (``resam-momentum`` = 1): a server in the other mode excludes it with a reason instead of misreading it.

Bias correction (optional, off by default, as RESAM's analysis is without it): with few rounds the momentum
starts small (``m_1 = (1-β) g_1``: 10 % of a gradient at β = 0.9); ``bias_correction=True`` replies
``m_t / (1 - β^t)`` (Adam's correction, t = this worker's number of updates) while keeping ``m_t``.

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
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore import log

from .. import protocol as P
from ..aggregators.base import check_float
from ..flat import FlatSpec, default_buffer_keys
from .momentum_store import Lineage, MomentumStore

__all__ = ["momentum_mod", "MOMENTUM_STATE_KEY", "GRADIENT_FLAG"]

MOMENTUM_STATE_KEY = P.MOMENTUM_STATE
GRADIENT_FLAG = P.REPLY_GRADIENT


def _single(records: dict, what: str) -> tuple[str, object]:
    if len(records) != 1:
        raise ValueError(f"expects exactly one {what}, got {len(records)}")
    return next(iter(records.items()))


def _error_reply(msg: Message, reason: str) -> Message:
    from flwr.app import Error
    from flwr.common.constant import ErrorCode

    log(WARNING, "momentum_mod: %s", reason)
    return Message(
        Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"momentum_mod: {reason}"), reply_to=msg
    )


def _spec(global_rec: ArrayRecord, config) -> FlatSpec:
    """The model's layout, with the buffers the server named (else PyTorch's BatchNorm names)."""
    named = config.get(P.BUFFERS)
    buffers = [str(k) for k in named] if isinstance(named, list) else default_buffer_keys(global_rec)
    return FlatSpec.from_record(global_rec, [k for k in buffers if k in global_rec])


def _with_buffers(reply_rec: ArrayRecord, global_rec: ArrayRecord, spec: FlatSpec) -> ArrayRecord:
    """An inner reply of parameters only gets the global buffers (they stay as they are)."""
    if list(reply_rec.keys()) == list(spec.keys) or not spec.buffer_keys:
        return reply_rec
    missing = [k for k in spec.keys if k not in reply_rec]
    carried = {k for k, o in zip(spec.keys, spec.offsets, strict=True) if o < 0}  # integer arrays
    if not set(missing) <= set(spec.buffer_keys) | carried:
        return reply_rec  # not just buffers: spec.read reports what is wrong
    return ArrayRecord({k: reply_rec[k] if k in reply_rec else global_rec[k] for k in spec.keys})


def momentum_mod(
    beta: float = 0.9,
    *,
    local_lr: float | None = None,
    bias_correction: bool = False,
    state_key: str = MOMENTUM_STATE_KEY,
    state_dir: str | os.PathLike | None = None,
) -> Mod:
    """Build the mod; use as ``ClientApp(mods=[momentum_mod(0.9)])``.

    Parameters
    ----------
    beta
        Momentum coefficient β in [0, 1). β = 0 replies with the plain gradient (robust DSGD).
    local_lr
        Learning rate of a weights-returning inner app, when its reply does not report ``local-lr``
        (default: your train config's ``lr``).
    bias_correction
        Reply ``m_t / (1 - β^t)`` instead of ``m_t`` (off by default: RESAM's analysis is without it).
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
        if config.get(P.MODE) == "model":  # the server wants trained weights: nothing to do here
            return call_next(msg, ctxt)
        if P.MODE not in config and P.SERVER_ROUND not in config:
            return _error_reply(
                msg,
                f"the train message has no {P.MODE}: the server is not ResilientAveraging, and a FedAvg "
                "server would average these momentums as if they were weights; use "
                "resam_flower.strategies.ResilientAveraging on the server, or remove momentum_mod",
            )
        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        try:
            rkey, reply_rec = _single(reply.content.array_records, "ArrayRecord in the inner reply")
        except ValueError as exc:
            return _error_reply(msg, str(exc))
        spec = _spec(global_rec, config)
        metrics = _reply_metrics(reply)
        vec, reason = spec.read(_with_buffers(reply_rec, global_rec, spec), check_finite=True)
        if vec is None:
            return _error_reply(msg, f"inner reply does not match the model: {reason}")
        p = spec.param_dim
        g = vec[:p]
        if not P.reply_flag(reply, GRADIENT_FLAG):  # the server's reading of the flag
            eta = metrics.get(P.LOCAL_LR, local_lr if local_lr is not None else config.get("lr"))
            if eta is None or isinstance(eta, (bool, list, str)) or float(eta) <= 0:
                keys = ", ".join(sorted(k for k in config if not k.startswith(P.PREFIX))) or "none"
                return _error_reply(
                    msg,
                    f"weights reply without a local learning rate (got {eta!r}): the mod looks for the reply "
                    f"metric {P.LOCAL_LR}, then momentum_mod(local_lr=...), then the train config key lr "
                    f"(your train config's keys: {keys})",
                )
            g = (spec.flatten(global_rec)[:p] - g) / float(eta)
            used_eta = float(eta)
        else:
            used_eta = None
        mspec = spec.params_only()
        store = _store(ctxt, config, state_dir)
        if store is None:
            m, steps = _load_momentum(ctxt, state_key, mspec)
        else:
            m, steps = _load_stored_momentum(ctxt, state_key, mspec, *store)
        m.mul_(beta).add_(g, alpha=1.0 - beta)
        steps += 1  # the updates folded into m (0 before: a fresh momentum)
        ctxt.state[state_key + "-steps"] = ConfigRecord({"steps": steps})
        state = mspec.unflatten(m, like=global_rec)
        ctxt.state[state_key] = state
        if store is not None:
            _save_stored_momentum(ctxt, state_key, m, *store)
        sent, sent_arrays = m, state  # the reply shares the state's (immutable) Arrays: serialised once
        if bias_correction and beta > 0:
            sent = m / (1.0 - beta**steps)
            sent_arrays = mspec.unflatten(sent, like=global_rec)
        full = _with_buffers(reply_rec, global_rec, spec)  # buffers and integer arrays: the worker's own
        out = reply.content
        out.array_records[rkey] = ArrayRecord(
            {k: sent_arrays[k] if k in sent_arrays else full[k] for k in spec.keys}
        )
        flags = {P.REPLY_MOMENTUM: 1, P.MOMENTUM_NORM: float(torch.linalg.vector_norm(sent))}
        if used_eta is not None:
            flags[P.USED_LOCAL_LR] = used_eta
        P.add_reply_metrics(reply, flags)
        return reply

    return mod


def _reply_metrics(reply: Message) -> dict:
    """The inner reply's metrics, every MetricRecord of it (the server reads the flags from any of them)."""
    out: dict = {}
    for rec in reply.content.metric_records.values():
        for k, v in rec.items():
            out.setdefault(k, v)
    return out


def _steps(ctxt: Context, key: str) -> int:
    """How many updates the momentum in memory holds (for the bias correction)."""
    return int(ctxt.state.config_records.get(key + "-steps", {}).get("steps", 0))


def _load_momentum(ctxt: Context, key: str, spec: FlatSpec) -> tuple[torch.Tensor, int]:
    """The stored momentum as a vector and its number of updates, or zeros and 0 (first round, or the
    model's layout changed)."""
    if key in ctxt.state.array_records:
        vec, reason = spec.read(ctxt.state.array_records[key], check_finite=True)
        if vec is not None:
            return vec, _steps(ctxt, key)
        log(WARNING, "momentum_mod: stored momentum discarded (%s); starting from zero", reason)
    return torch.zeros(spec.dim), 0


# -- optional crash-safe copy ------------------------------------------------------------------------
def _store(ctxt: Context, config, state_dir) -> tuple[MomentumStore, int, Lineage, int | None] | None:
    """The node's momentum store, the round, the lineage and the server's checkpoint round (or ``None``)."""
    root = state_dir or ctxt.node_config.get(P.MOMENTUM_DIR) or config.get(P.MOMENTUM_DIR)
    if not root:
        return None
    server_round = int(config.get(P.SERVER_ROUND, 0))
    if server_round < 1:
        log(WARNING, "momentum_mod: no %s in the train config; momentum kept in memory only", P.SERVER_ROUND)
        return None
    if P.LINEAGE in config:
        lineage = Lineage.parse(config[P.LINEAGE])
    else:  # no server lineage: files are valid within this run only (a SuperNode restart, not a new run)
        lineage = Lineage.fresh(f"run{int(ctxt.run_id) & 0xFFFFFFFF:x}")
    ckpt = config.get(P.CHECKPOINT_ROUND)
    key = ctxt.node_config.get("partition-id", ctxt.node_id)
    return MomentumStore(str(root), key), server_round, lineage, None if ckpt is None else int(ckpt)


def _load_stored_momentum(
    ctxt: Context, key: str, spec: FlatSpec, store: MomentumStore, rnd: int, lineage: Lineage, _ckpt
) -> tuple[torch.Tensor, int]:
    """m of this node's newest round before ``rnd`` in the lineage, from memory if it is that, else disk,
    and its number of updates: from memory, else (a restart) the file's round, exact when the node took
    part in every round and an upper bound otherwise (so the bias correction never over-amplifies)."""
    latest = store.latest(rnd, lineage)
    tag = ctxt.state.config_records.get(key + "-round")
    if tag is not None and key in ctxt.state.array_records:
        mem_round = int(tag["round"])
        usable = mem_round < rnd and lineage.generation_at(mem_round) == tag["generation"]
        if usable and (latest is None or mem_round >= latest[0]):
            vec, _ = spec.read(ctxt.state.array_records[key], check_finite=True)
            if vec is not None:
                return vec, _steps(ctxt, key)
    if latest is not None:
        vec = store.read(latest[1], spec.dim)
        if vec is not None:
            return vec, latest[0]
        log(
            WARNING,
            "momentum_mod: momentum file %s unreadable or of another model; starting from zero",
            latest[1],
        )
    elif rnd > 1:  # this node's first round, or a restart whose files are gone: said, not silent
        log(INFO, "momentum_mod: round %d: no earlier momentum of this node in memory or in %s; starting "
            "from zero", rnd, store.dir)
    return torch.zeros(spec.dim), 0


def _save_stored_momentum(
    ctxt: Context, key: str, m: torch.Tensor, store: MomentumStore, rnd: int, lineage: Lineage, ckpt
) -> None:
    store.write(rnd, lineage.current, m)
    ctxt.state[key + "-round"] = ConfigRecord({"round": rnd, "generation": lineage.current})
    store.prune(lineage, ckpt)
