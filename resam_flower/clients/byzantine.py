"""``byzantine_mod``: the Byzantine behaviours a node runs itself (simulation and real devices alike).

Placed outermost, ``ClientApp(mods=[byzantine_mod, momentum_mod(0.9)])``, it reads the node's role from

* the node config ``byzantine`` (real devices: ``flower-supernode --node-config "byzantine='sf'"``), with
  parameters as ``byzantine-<param>`` (e.g. ``byzantine-sigma=10``): a device's role is its operator's
  choice alone; or
* in a simulation only, the train config key ``resam-byzantine`` that the simulated adversary
  (:class:`resam_flower.strategies.SimulatedAdversary`) sends to the nodes it controls. A deployed SuperNode
  ignores that key (with a warning): a server cannot turn an honest device Byzantine. A simulation is
  recognised as Flower's Ray simulation engine (:func:`resam_flower.compat.in_simulation`) or by the node
  config flag ``resam-simulated-roles = true`` (in-process test grids).

Roles:

* ``lf`` (label flipping): the worker trains on labels ``C - 1 - y`` (the mod sets ``resam-flip-labels``);
  the reply is otherwise honest, momentum included.
* ``lf-lab`` (simulation only): the lab's label flipping, the mean of the honest nodes' flipped-label
  gradients (the mod sets ``resam-flip-labels = "lab"``; the default app's ``lab_label_flipping_mod`` computes
  it from the honest partitions the server sends).
* ``sf``, ``gaussian``, ``inf``: the node's own reply (its momentum) is corrupted by
  :func:`resam_flower.attacks.corrupt_own_update`.
* ``omniscient`` (simulation only): the node does not train; its reply is replaced by the simulated
  adversary's forged vector, so it answers with the global model's layout at once.
"""

from __future__ import annotations

import zlib
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore import log

from .. import protocol as P
from ..attacks import corrupt_own_update
from ..compat import in_simulation
from ..flat import FlatSpec, safe_text

__all__ = ["byzantine_mod", "FLIP_LABELS_KEY", "NODE_ROLE_KEY"]

NODE_ROLE_KEY = P.NODE_ROLE
FLIP_LABELS_KEY = P.FLIP_LABELS
OWN_UPDATE_ATTACKS = ("sf", "gaussian", "inf")
_warned: set[int] = set()


def _role(msg: Message, ctxt: Context) -> tuple[str, dict, bool]:
    """``(role, params, from_server)``: the node config's role, else (in a simulation) the server's."""
    node_role = str(ctxt.node_config.get(NODE_ROLE_KEY, "") or "")
    params = {
        k[len(NODE_ROLE_KEY) + 1 :].replace("-", "_"): v
        for k, v in ctxt.node_config.items()
        if k.startswith(NODE_ROLE_KEY + "-")
    }
    if node_role:
        return node_role.lower(), params, False
    config = next(iter(msg.content.config_records.values()), {})
    sent = str(config.get(P.ROLE, "") or "").lower()
    if sent in ("", "none", "honest"):
        return "", params, False
    if ctxt.node_config.get(P.SIMULATED_ROLES) is True or in_simulation():
        return sent, params, True
    if ctxt.node_id not in _warned:
        _warned.add(ctxt.node_id)
        log(
            WARNING,
            "byzantine_mod: the server asked this node to act Byzantine (%s); ignored: a deployed node "
            "takes its role from its own node config only",
            safe_text(sent, 40),
        )
    return "", params, False


def _drop_flip_flag(msg: Message) -> None:
    """Remove ``resam-flip-labels`` from the train config: the flag is this mod's own, set for a node whose
    role is label flipping; sent by a server, it would make a deployed honest node train on flipped labels."""
    for key, cfg in list(msg.content.config_records.items()):
        if FLIP_LABELS_KEY in cfg:
            msg.content.config_records[key] = ConfigRecord(
                {k: v for k, v in cfg.items() if k != FLIP_LABELS_KEY}
            )


def byzantine_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run this node's Byzantine role, if it has one; honest nodes pass straight through."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    _drop_flip_flag(msg)
    role, params, from_server = _role(msg, ctxt)
    if role in ("", "none", "honest"):
        return call_next(msg, ctxt)
    reply = _act(role, params, msg, ctxt, call_next)
    if from_server and not reply.has_error():  # tells the simulated adversary its role was run
        P.add_reply_metrics(reply, {P.ROLE_APPLIED: 1})
    return reply


def _act(role: str, params: dict, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """The reply of a node whose role is ``role``."""
    arrays = next(iter(msg.content.array_records.values()))
    if role == "omniscient":
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})})  # replaced
        return Message(content=content, reply_to=msg)
    if role in ("lf", "lf-lab"):  # lf-lab (simulation only): the app's lab_label_flipping_mod computes it
        cfg_key, cfg = next(iter(msg.content.config_records.items()))
        flip: bool | str = True if role == "lf" else "lab"
        msg.content.config_records[cfg_key] = ConfigRecord({**dict(cfg), FLIP_LABELS_KEY: flip})
        return call_next(msg, ctxt)
    if role not in OWN_UPDATE_ATTACKS:
        raise ValueError(
            f"unknown Byzantine role {safe_text(role, 40)!r}; "
            f"use lf, lf-lab, {', '.join(OWN_UPDATE_ATTACKS)} or omniscient"
        )
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    key, rec = next(iter(reply.content.array_records.items()))
    spec = FlatSpec.from_record(arrays, None)  # BatchNorm statistics last: only parameters are corrupted
    own, reason = spec.read(rec, check_finite=False)
    if own is None:
        return reply
    p = spec.param_dim
    config = next(iter(msg.content.config_records.values()), {})
    seed = zlib.crc32(f"{ctxt.node_id}/{config.get(P.SERVER_ROUND, 0)}".encode())
    if role == "gaussian":
        params.setdefault("seed", seed)
    own[:p] = corrupt_own_update(role, own[:p], **params).to(own.dtype)
    reply.content.array_records[key] = spec.unflatten(own, like=arrays)
    log(INFO, "byzantine_mod: node %s sent a %s-corrupted update", ctxt.node_id, role)
    return reply
