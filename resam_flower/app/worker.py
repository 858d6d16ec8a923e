"""The default app's worker: RESAM's DSGD worker as a Flower ClientApp.

Each train round it loads the global model, samples one mini-batch of its partition (a stream seeded by the
run seed, its partition id and the round, so results do not depend on which process serves it), and replies
with the stochastic gradient (or, with ``local-steps`` K > 1, with the weights after K local SGD steps), the
worker-side weight decay and clipping applied (:func:`~resam_flower.app.task.regularise_and_clip`).
``momentum_mod`` turns that reply into the worker's momentum; ``byzantine_mod`` runs a Byzantine role;
:func:`lab_label_flipping_mod` runs the lab's label flipping (``lf-lab``) in simulation.

What the worker reads
---------------------
* The experiment (model, data, batch size, ``weight-decay-at``, ``worker-clip``...): the ``exp-`` keys the
  server sends (:meth:`ExperimentConfig.from_message`), over the node's run config.
* Its data partition: ``resam-data-partition`` / ``resam-data-partitions`` from the train config when the
  server sends them (a simulated server does when the data is split among honest nodes, ``data-split =
  "honest"``), else the node config's ``partition-id`` / ``num-partitions``. With ``data-split = "honest"``
  and an attack, a train message without them is refused (the node would train on a split of ``n`` parts).
* ``resam-server-round`` (the mini-batch stream) and ``resam-server-lr`` (a K-step worker's default rate).
* ``resam-flip-labels``: ``True`` trains on flipped labels (``lf``); ``"lab"`` runs the lab's variant.
* For ``"lab"``: ``resam-honest-partitions`` (list of int, or ``"0,1,2"``), the partitions of this round's
  honest nodes, of ``resam-data-partitions`` partitions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from logging import WARNING

import torch
from flwr.app import Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore import log

from .. import protocol as P
from ..clients.byzantine import byzantine_mod
from ..clients.momentum import momentum_mod
from ..data import load_partition
from .config import MESSAGE_PREFIX, ExperimentConfig
from .task import (
    evaluate,
    gradient_record,
    minibatch_gradient,
    model_for,
    partition_for,
    round_generator,
    worker_step,
)

__all__ = [
    "train",
    "evaluate_handler",
    "make_client_app",
    "lab_label_flipping_mod",
    "lab_flipped_gradient",
    "HONEST_PARTITIONS",
    "LAB_FLIP",
]

#: Train-config key: the data partitions of this round's honest nodes (sent to ``lf-lab`` Byzantine nodes).
HONEST_PARTITIONS = P.HONEST_PARTITIONS
#: Value of ``resam-flip-labels`` for the lab's label flipping (``True``: our own-data variant ``lf``).
LAB_FLIP = "lab"


_said_no_partition: set[int] = set()  # node ids told about a missing partition-id (once each)


def _partition(ctxt: Context, cfg: ExperimentConfig, config, *, strict: bool) -> tuple[int, int]:
    """``(partition_id, num_partitions)``: the server's assignment if sent, else the node config's."""
    if P.DATA_PARTITION in config:
        return int(config[P.DATA_PARTITION]), int(config[P.DATA_PARTITIONS])
    if strict and cfg.num_data_partitions != cfg.num_clients:
        raise ValueError(
            f"data-split = 'honest': the server must send each node {P.DATA_PARTITION} and "
            f"{P.DATA_PARTITIONS} (the data is split in {cfg.num_data_partitions} parts among honest nodes); "
            f"this train message has none"
        )
    missing = [k for k in ("partition-id", "num-partitions") if k not in ctxt.node_config]
    if missing and ctxt.node_id not in _said_no_partition:
        _said_no_partition.add(ctxt.node_id)
        log(WARNING, "node %s: no %s in its node config: it uses partition-id %s of %s, as does every node "
            "started without one (the same data); start it with --node-config \"partition-id=K "
            "num-partitions=N\"", ctxt.node_id, " or ".join(missing),
            ctxt.node_config.get("partition-id", 0), ctxt.node_config.get("num-partitions", cfg.num_clients))
    pid = int(ctxt.node_config.get("partition-id", 0))
    num = int(ctxt.node_config.get("num-partitions", cfg.num_clients))
    return pid, num


def _server_round(config) -> int:
    if P.SERVER_ROUND not in config:
        raise ValueError(f"the train config has no {P.SERVER_ROUND}: the mini-batch stream depends on it")
    return int(config[P.SERVER_ROUND])


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread while a handler runs (several virtual clients share the cores), then as before."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def train(msg: Message, ctxt: Context) -> Message:
    """One RESAM worker step on this node's partition."""
    with _one_thread():
        config = msg.content["config"]
        cfg = ExperimentConfig.from_message(config, ctxt.run_config)
        pid, num = _partition(ctxt, cfg, config, strict=True)
        data = partition_for(cfg, pid, num)
        model = model_for(cfg, data.num_classes, data.in_shape, msg.content["arrays"])
        # Local SGD rate: local-lr if set; else, in gradient mode, the server's current rate (K-step workers
        # then move like the server would), and in model mode the run's lr (the server applies them with 1).
        default = cfg.lr if cfg.mode == "model" else float(config.get(P.SERVER_LR, cfg.lr))
        flip = config.get(P.FLIP_LABELS, False)
        if flip == LAB_FLIP:
            raise ValueError(f"{P.FLIP_LABELS} = 'lab' reached the worker: it needs lab_label_flipping_mod")
        out, metrics = worker_step(
            model,
            data,
            cfg,
            round_generator(cfg.seed, pid, _server_round(config)),
            flip=flip is True,
            local_lr=cfg.local_lr or default,
        )
    return Message(content=RecordDict({"arrays": out, "metrics": MetricRecord(metrics)}), reply_to=msg)


def evaluate_handler(msg: Message, ctxt: Context) -> Message:
    """Accuracy and loss of the global model on this node's partition of the test split."""
    with _one_thread():
        config = msg.content["config"]
        cfg = ExperimentConfig.from_message(config, ctxt.run_config)
        pid, num = _partition(ctxt, cfg, config, strict=False)
        data = load_partition(cfg.dataset, pid, num, "iid", seed=cfg.seed, split="test")
        model = model_for(cfg, data.num_classes, data.in_shape, msg.content["arrays"])
        res = evaluate(model, data)
    res["num-examples"] = float(len(data))
    return Message(content=RecordDict({"metrics": MetricRecord(res)}), reply_to=msg)


# -- the lab's label flipping ----------------------------------------------------------------------------
def lab_flipped_gradient(
    model: torch.nn.Module,
    cfg: ExperimentConfig,
    partitions: list[int],
    num_partitions: int,
    server_round: int,
) -> tuple[dict[str, torch.Tensor], float]:
    r"""The lab's label-flipping vector :math:`\frac{1}{h}\sum_{i} \tilde g_i` and the mean flipped loss.

    For each honest partition ``i`` it redraws the mini-batch honest worker ``i`` uses this round
    (:func:`~resam_flower.app.task.round_generator` ``(seed, i, round)``, first draw) and computes the
    gradient on labels ``C - 1 - y`` at the global model, with the same worker-side weight decay and clipping
    as an honest gradient (LPD-EPFL/robust-collaborative-learning clips the flipped gradients too); the
    forward pass is in training mode, as the honest one (ByzFL computes it in eval mode: the same for models
    without BatchNorm or dropout). No momentum: the mean is sent as it is.
    """
    if not partitions:
        raise ValueError(f"lf-lab needs the honest nodes' partitions ({HONEST_PARTITIONS}), got none")
    model.train()
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    losses = []
    for pid in partitions:
        data = partition_for(cfg, pid, num_partitions)
        gen = round_generator(cfg.seed, pid, server_round)
        losses.append(minibatch_gradient(model, data, cfg, gen, flip=True))
        for k, p in params.items():
            total[k].add_(p.grad)
    return {k: v.div_(len(partitions)) for k, v in total.items()}, sum(losses) / len(losses)


#: The last lab label-flipping vector this process computed: ``(key, (grads, loss))``. Every ``lf-lab`` node
#: of a round sends the same vector (the same honest partitions, mini-batches and global model), so the nodes
#: a process serves in one round (all of them on the in-process engine, those of one actor under Ray) compute
#: it once; the key holds everything the vector depends on (see :func:`_lab_flip_key`).
_LAB_FLIP_CACHE: list[tuple[tuple, tuple[dict[str, torch.Tensor], float]]] = []


def _lab_flip_key(cfg: ExperimentConfig, partitions: list[int], num: int, server_round: int, arrays) -> tuple:
    """What :func:`lab_flipped_gradient` depends on: the experiment config, the honest partitions, the round
    and the global model's bytes (a digest)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, arr in arrays.items():
        digest.update(name.encode())
        digest.update(arr.dtype.encode() + repr(tuple(arr.shape)).encode())
        digest.update(arr.data)
    config = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return config, tuple(partitions), num, server_round, digest.hexdigest()


def _cached_lab_flip(key: tuple, compute) -> tuple[dict[str, torch.Tensor], float]:
    """``compute()`` unless this process's last lab vector has ``key``; a copy either way."""
    if _LAB_FLIP_CACHE and _LAB_FLIP_CACHE[0][0] == key:
        grads, loss = _LAB_FLIP_CACHE[0][1]
    else:
        grads, loss = compute()
        _LAB_FLIP_CACHE[:] = [(key, (grads, loss))]
    return {k: v.clone() for k, v in grads.items()}, loss


def _int_list(value, key: str) -> list[int]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key} must be a list of partition ids, got {value!r:.80}") from exc
    return out


def lab_label_flipping_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Reply the lab's label-flipping vector when ``resam-flip-labels = "lab"`` (a ``lf-lab`` node).

    Placed after ``byzantine_mod`` (which sets the key for a node whose role is ``lf-lab``, in simulation
    only) and before ``momentum_mod``: the vector skips the momentum, as in the lab's code. The reply is
    flagged as a momentum reply (``resam-momentum`` = 1: what the server aggregates) and carries the global
    model's buffers unchanged. Other messages pass through. The vector is computed once per round and
    process (:data:`_LAB_FLIP_CACHE`): with f such nodes in one process the others reuse it, bit for bit.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    config = next(iter(msg.content.config_records.values()), {})
    if config.get(P.FLIP_LABELS) != LAB_FLIP:
        return call_next(msg, ctxt)
    if HONEST_PARTITIONS not in config:
        raise ValueError(f"lf-lab: the train config has no {HONEST_PARTITIONS} (a simulated server sends it)")
    with _one_thread():
        cfg = ExperimentConfig.from_message(config, ctxt.run_config)
        num = int(config.get(P.DATA_PARTITIONS, cfg.num_data_partitions))
        partitions = _int_list(config[HONEST_PARTITIONS], HONEST_PARTITIONS)
        probe = partition_for(cfg, partitions[0] if partitions else 0, num)
        model = model_for(cfg, probe.num_classes, probe.in_shape, msg.content["arrays"])
        names = dict(model.named_parameters())
        buffers = {k: v.clone() for k, v in model.state_dict().items() if k not in names}
        rnd = _server_round(config)
        key = _lab_flip_key(cfg, partitions, num, rnd, msg.content["arrays"])
        grads, loss = _cached_lab_flip(key, lambda: lab_flipped_gradient(model, cfg, partitions, num, rnd))
        model.load_state_dict(buffers, strict=False)  # the global statistics, not those of the flipped passes
        out = gradient_record(model, grads)
    metrics = {
        "train-loss": loss,
        "num-examples": float(cfg.batch_size * len(partitions)),
        P.REPLY_MOMENTUM: 1,
        P.MOMENTUM_NORM: float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads.values()]))),
    }
    return Message(content=RecordDict({"arrays": out, "metrics": MetricRecord(metrics)}), reply_to=msg)


# -- the ClientApp -----------------------------------------------------------------------------------------
def make_client_app(momentum: float | None = None) -> ClientApp:
    """The worker ClientApp with ``byzantine_mod``, :func:`lab_label_flipping_mod` and ``momentum_mod``.

    ``momentum`` fixes β; ``None`` reads it per message from the experiment config the server sends
    (``exp-momentum``), else from the run config key ``momentum``, which is what the default app does; in
    ``model`` mode (``exp-mode = "model"``) replies pass through unchanged (FedAvg-style weights).
    """
    inner = momentum_mod(momentum) if momentum is not None else _run_config_momentum_mod
    app = ClientApp(mods=[byzantine_mod, lab_label_flipping_mod, inner])
    app.train()(train)
    app.evaluate()(evaluate_handler)
    return app


def _run_config_momentum_mod(msg: Message, ctxt: Context, call_next):
    """``momentum_mod`` with β from the message's experiment config, else the run config (cached per β)."""
    config = next(iter(msg.content.config_records.values()), {})
    if config.get(f"{MESSAGE_PREFIX}mode") == "model":
        return call_next(msg, ctxt)  # model mode: FedAvg-style weights go to the server as they are
    beta = float(config.get(f"{MESSAGE_PREFIX}momentum", ctxt.run_config.get("momentum", 0.9)))
    mod = _MODS.get(beta)
    if mod is None:
        mod = _MODS[beta] = momentum_mod(beta)
    return mod(msg, ctxt, call_next)


_MODS: dict[float, object] = {}
