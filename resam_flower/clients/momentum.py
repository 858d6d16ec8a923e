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
"""

from __future__ import annotations

from logging import WARNING

import torch
from flwr.app import Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore import log

from ..aggregators.base import check_float
from ..flat import FlatSpec

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
    beta: float = 0.9, *, local_lr: float | None = None, state_key: str = MOMENTUM_STATE_KEY
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
        m = _load_momentum(ctxt, state_key, spec)
        m.mul_(beta).add_(g, alpha=1.0 - beta)
        ctxt.state[state_key] = spec.unflatten(m, like=global_rec)
        out = reply.content
        out.array_records[rkey] = spec.unflatten(m, like=global_rec)
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
