"""Every key the RESAM server and its clients exchange, in one place.

The strategy never overwrites a key a user's app sets (``lr``, ``local-epochs``...): what it sends lives
under the ``resam-`` prefix, so a Flower app that adds RESAM keeps its own train config as it was. Like
FedAvg it also sends Flower's :data:`FLOWER_SERVER_ROUND` (``server-round``), unless the user's config holds
that key already: a ClientApp written for FedAvg reads it. Flower keeps the keys of its differential-privacy
strategy + mod pair in one constants module in the same way.

Server -> user (the round's train :class:`~flwr.app.MetricRecord` in ``Result.train_metrics_clientapp``)
    The clients' metrics under their own names (robust medians), as FedAvg returns them, and the server's
    figures (``valid``, ``excluded``, ``f``, ``lr``, ``skipped``...) under :func:`server_metric` names.

Server -> client (train :class:`~flwr.app.ConfigRecord`)
    :data:`SERVER_ROUND`, :data:`SERVER_LR`, :data:`MODE`, :data:`BUFFERS`; in simulation only,
    :data:`ROLE` (a Byzantine node's role this round, with :data:`HONEST_PARTITIONS` for ``lf-lab``) and
    :data:`DATA_PARTITION` / :data:`DATA_PARTITIONS`
    (which slice of the data a node holds when the data is split among honest nodes); with checkpoints,
    :data:`MOMENTUM_DIR`, :data:`LINEAGE`, :data:`CHECKPOINT_ROUND`.
Client -> server (reply :class:`~flwr.app.MetricRecord`)
    :data:`REPLY_GRADIENT` (set by an inner app whose arrays are a gradient), :data:`REPLY_MOMENTUM` (set by
    ``momentum_mod``: the arrays are the worker's momentum), :data:`LOCAL_LR` (the local learning rate of an
    app that returns trained weights), :data:`MOMENTUM_NORM`, :data:`USED_LOCAL_LR`, :data:`ROLE_APPLIED`.
Node config (set by the operator of a device)
    :data:`NODE_ROLE` and ``byzantine-<param>`` (a Byzantine device for experiments), :data:`MOMENTUM_DIR`.
``context.state``
    :data:`MOMENTUM_STATE` (the worker's momentum, an ArrayRecord).
"""

from __future__ import annotations

from flwr.app import MetricRecord

__all__ = [
    "PREFIX",
    "FLOWER_SERVER_ROUND",
    "server_metric",
    "reply_numbers",
    "reply_flag",
    "add_reply_metrics",
    "SERVER_ROUND",
    "SERVER_LR",
    "MODE",
    "MODES",
    "BUFFERS",
    "ROLE",
    "FLIP_LABELS",
    "HONEST_PARTITIONS",
    "DATA_PARTITION",
    "DATA_PARTITIONS",
    "MOMENTUM_DIR",
    "LINEAGE",
    "CHECKPOINT_ROUND",
    "REPLY_GRADIENT",
    "REPLY_MOMENTUM",
    "LOCAL_LR",
    "MOMENTUM_NORM",
    "USED_LOCAL_LR",
    "ROLE_APPLIED",
    "NODE_ROLE",
    "SIMULATED_ROLES",
    "MOMENTUM_STATE",
    "BUFFER_SUFFIXES",
]

PREFIX = "resam-"

#: Flower's round key, as FedAvg writes it into the train and evaluate configs.
FLOWER_SERVER_ROUND = "server-round"


def server_metric(key: str) -> str:
    """The name of a server figure in a round's MetricRecord: ``valid`` -> ``resam-valid``."""
    return PREFIX + key


def reply_numbers(message, key: str) -> list[float]:
    """Every real number ``key`` holds across a message's MetricRecords, in record order.

    A reply may carry several MetricRecords; the server and ``momentum_mod`` read a flag or a rate from
    any of them, through this one function, so the two sides cannot disagree on what a reply says. A
    bool, a list or a string under ``key`` is no number and is left out.
    """
    out = []
    for record in message.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(float(value))
    return out


def reply_flag(message, key: str) -> bool:
    """Whether a reply sets the flag ``key``: ``1`` in any of its MetricRecords (:func:`reply_numbers`)."""
    return 1.0 in reply_numbers(message, key)


def add_reply_metrics(message, metrics: dict) -> None:
    """Add ``metrics`` to every MetricRecord of a reply (a new ``"metrics"`` record if it has none), so that
    :func:`reply_numbers` finds them whichever record a reader looks at first."""
    records = message.content.metric_records
    for key, record in list(records.items()):
        records[key] = MetricRecord({**dict(record), **metrics})
    if not records:
        message.content["metrics"] = MetricRecord(dict(metrics))


# -- server -> client: the train config -------------------------------------------------------------
#: The global round number (continues after a resume).
SERVER_ROUND = "resam-server-round"
#: The server's learning rate γ_t this round (informative: e.g. a K-step worker may move at this rate).
SERVER_LR = "resam-server-lr"
#: ``"gradient"`` (replies are momentums of gradients) or ``"model"`` (replies are trained weights).
MODE = "resam-mode"
MODES = ("gradient", "model")
#: Keys of the model's buffers (list of str): reported as values, never turned into momentum.
BUFFERS = "resam-buffers"
#: A node's Byzantine role this round, sent by the simulated adversary (honoured in simulation only).
ROLE = "resam-byzantine"
#: Set by ``byzantine_mod`` for the inner app of a label-flipping node: ``True`` trains on flipped labels
#: (``lf``); ``"lab"`` computes the lab's variant (``lf-lab``: the mean of the honest nodes' flipped-label
#: gradients, on the partitions listed in :data:`HONEST_PARTITIONS`).
FLIP_LABELS = "resam-flip-labels"
#: The data partitions of this round's honest sampled nodes (list of int), sent to ``lf-lab`` nodes.
HONEST_PARTITIONS = "resam-honest-partitions"
#: This node's data partition and the number of partitions (simulation, data split among honest nodes).
DATA_PARTITION = "resam-data-partition"
DATA_PARTITIONS = "resam-data-partitions"
#: Crash-safe copy of the momentum: directory, the run's lineage, the server's latest checkpoint round.
MOMENTUM_DIR = "resam-momentum-dir"
LINEAGE = "resam-lineage"
CHECKPOINT_ROUND = "resam-checkpoint-round"

# -- client -> server: the reply's metrics -------------------------------------------------------------
#: ``1``: the inner app's ArrayRecord holds a gradient (not trained weights).
REPLY_GRADIENT = "resam-gradient"
#: ``1``: the reply holds the worker's momentum (set by ``momentum_mod``); required in gradient mode.
REPLY_MOMENTUM = "resam-momentum"
#: Local learning rate of an inner app that returns trained weights.
LOCAL_LR = "local-lr"
#: Euclidean norm of the momentum the worker sent.
MOMENTUM_NORM = "resam-momentum-norm"
#: The local learning rate ``momentum_mod`` divided a weights reply's step by (the server compares its own).
USED_LOCAL_LR = "resam-local-lr"
#: ``1``: ``byzantine_mod`` acted on the :data:`ROLE` the server sent (a deployed node ignores it, and the
#: simulated adversary stops a label-flipping run whose Byzantine nodes did not flip).
ROLE_APPLIED = "resam-byzantine-applied"

# -- node config --------------------------------------------------------------------------------------
#: A device's own Byzantine role (``flower-supernode --node-config "byzantine='sf'"``).
NODE_ROLE = "byzantine"
#: Node config flag: this node accepts roles sent by a simulated adversary (in-process test grids; Flower's
#: Ray simulation is recognised without it).
SIMULATED_ROLES = "resam-simulated-roles"

# -- context.state ------------------------------------------------------------------------------------
MOMENTUM_STATE = "resam-momentum"

#: Names (last dotted component) of PyTorch's float buffers that the default convention treats as buffers.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
