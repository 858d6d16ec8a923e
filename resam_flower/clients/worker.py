"""The ready PyTorch worker: RESAM's DSGD worker as a Flower ClientApp.

Each train round it loads the global model, samples one mini-batch of its partition (a stream seeded by the
run seed, its partition id and the round, so results do not depend on which process serves it), and replies
with the stochastic gradient (or, with ``local-steps`` K > 1, with the weights after K local SGD steps).
``momentum_mod`` turns that reply into the worker's momentum; ``byzantine_mod`` runs a Byzantine role.
Model, data partition, batch size and device come from the run config and the node config
(``partition-id``, ``num-partitions``).
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import protocol as P
from ..app.config import MESSAGE_PREFIX, ExperimentConfig
from ..app.task import evaluate, model_for, partition_for, round_generator, worker_step
from ..data import load_partition
from .byzantine import FLIP_LABELS_KEY, byzantine_mod
from .momentum import momentum_mod

__all__ = ["train", "evaluate_handler", "make_client_app"]


def _partition(ctxt: Context, cfg: ExperimentConfig) -> tuple[int, int]:
    pid = int(ctxt.node_config.get("partition-id", 0))
    num = int(ctxt.node_config.get("num-partitions", cfg.num_clients))
    return pid, num


def _threads() -> None:
    # Several virtual clients share the cores: one intra-op thread each avoids oversubscription.
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def train(msg: Message, ctxt: Context) -> Message:
    """One RESAM worker step on this node's partition."""
    _threads()
    config = msg.content["config"]
    cfg = ExperimentConfig.from_message(config, ctxt.run_config)
    arrays = msg.content["arrays"]
    pid, num = _partition(ctxt, cfg)
    data = partition_for(cfg, pid, num)
    model = model_for(cfg, data.num_classes, data.in_shape, arrays)

    # Local SGD rate: local-lr if set; else, in gradient mode, the server's current rate (K-step workers
    # then move like the server would), and in model mode the run's lr (the server applies updates with 1.0).
    default = cfg.lr if cfg.mode == "model" else float(config.get(P.SERVER_LR, cfg.lr))
    local_lr = cfg.local_lr or default
    out, metrics = worker_step(
        model,
        data,
        cfg,
        round_generator(cfg.seed, pid, int(config[P.SERVER_ROUND])),
        flip=bool(config.get(FLIP_LABELS_KEY, False)),
        local_lr=local_lr,
    )
    return Message(content=RecordDict({"arrays": out, "metrics": MetricRecord(metrics)}), reply_to=msg)


def evaluate_handler(msg: Message, ctxt: Context) -> Message:
    """Accuracy and loss of the global model on this node's partition of the test split."""
    _threads()
    cfg = ExperimentConfig.from_message(msg.content["config"], ctxt.run_config)
    pid, num = _partition(ctxt, cfg)
    data = load_partition(cfg.dataset, pid, num, "iid", seed=cfg.seed, split="test")
    model = model_for(cfg, data.num_classes, data.in_shape, msg.content["arrays"])
    res = evaluate(model, data)
    res["num-examples"] = float(len(data))
    return Message(content=RecordDict({"metrics": MetricRecord(res)}), reply_to=msg)


def make_client_app(momentum: float | None = None) -> ClientApp:
    """The worker ClientApp with ``byzantine_mod`` and ``momentum_mod``.

    ``momentum`` fixes β; ``None`` reads it per message from the experiment config the server sends
    (``exp-momentum``), else from the run config key ``momentum``, which is what the default app does; in
    ``model`` mode (``exp-mode = "model"``) replies pass through unchanged (FedAvg-style weights).
    """
    mods = [byzantine_mod, momentum_mod(momentum) if momentum is not None else _run_config_momentum_mod]
    app = ClientApp(mods=mods)
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
