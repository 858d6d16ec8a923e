"""What the default app computes: model and data by config, one worker step, evaluation.

Shared by the ServerApp (initial model, centralised evaluation) and the ClientApp (the worker). Models and
data are cached per process, so a Ray worker serving many virtual clients builds each once.
"""

from __future__ import annotations

import functools
import zlib

import torch
from flwr.app import ArrayRecord
from torch import nn

from ..attacks import flip_labels
from ..data import load_dataset, load_partition, partition_indices
from ..data.assignment import data_assignment, honest_partitions
from ..models import build_model
from .config import ExperimentConfig

__all__ = [
    "resolve_device",
    "model_for",
    "partition_for",
    "test_split",
    "worker_step",
    "minibatch_gradient",
    "regularise_and_clip",
    "gradient_record",
    "sample_batch",
    "evaluate",
    "round_generator",
    "data_assignment",
    "honest_partitions",
    "prepare_partitions",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU falls back to CPU (with the reason logged)."""
    if name == "auto" or name.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda" if name == "auto" else name)
        return torch.device("cpu")
    return torch.device(name)


def _data_options(cfg: ExperimentConfig) -> dict:
    """Data-set options given in the run config as ``data-<option>`` (e.g. ``data-num-train``)."""
    return {k[len("data-") :]: v for k, v in cfg.extra.items() if k.startswith("data-")}


def _partitioner_params(cfg: ExperimentConfig) -> dict:
    """Dirichlet's ``alpha``, the pathological split's classes per node, the gamma-similarity ``gamma``."""
    return {
        "alpha": cfg.alpha,
        "classes_per_partition": int(cfg.extra.get("classes-per-partition", 2)),
        "gamma": float(cfg.extra.get("gamma", 0.5)),
    }


def partition_for(cfg: ExperimentConfig, partition_id: int, num_partitions: int):
    """This node's training data (cached per process)."""
    return load_partition(
        cfg.dataset,
        partition_id,
        num_partitions,
        cfg.partitioner,
        seed=cfg.seed,
        dataset_options=_data_options(cfg),
        **_partitioner_params(cfg),
    )


def prepare_partitions(cfg: ExperimentConfig, num_partitions: int | None = None) -> None:
    """Compute the run's split once, into the on-disk cache the client processes read it from (default:
    ``cfg.num_data_partitions``, i.e. ``n - f`` partitions when the data is split among honest nodes)."""
    partition_indices(
        cfg.dataset,
        num_partitions or cfg.num_data_partitions,
        cfg.partitioner,
        seed=cfg.seed,
        dataset_options=_data_options(cfg),
        **_partitioner_params(cfg),
    )


def test_split(cfg: ExperimentConfig):
    """The test split used for centralised evaluation (first ``num-test`` examples if set)."""
    data = load_dataset(cfg.dataset, "test", **_data_options(cfg))
    if cfg.num_test and cfg.num_test < len(data):
        data = data.subset(torch.arange(cfg.num_test))
    return data


@functools.lru_cache(maxsize=4)
def _cached_model(name: str, num_classes: int, in_shape: tuple[int, ...], device: str) -> nn.Module:
    return build_model(name, num_classes, in_shape, seed=0, device=device)


def model_for(
    cfg: ExperimentConfig,
    num_classes: int,
    in_shape: tuple[int, ...],
    arrays: ArrayRecord | None = None,
    *,
    fresh: bool = False,
) -> nn.Module:
    """The model, with ``arrays`` loaded (``fresh`` builds a new one seeded by ``cfg.seed``)."""
    device = resolve_device(cfg.device)
    if fresh:
        return build_model(cfg.model, num_classes, in_shape, seed=cfg.seed, device=device)
    model = _cached_model(cfg.model, num_classes, tuple(in_shape), str(device))
    if arrays is not None:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    return model


def round_generator(seed: int, partition_id: int, server_round: int) -> torch.Generator:
    """Mini-batch sampling stream of one node in one round: independent of which process runs it."""
    g = torch.Generator()
    g.manual_seed(zlib.crc32(f"{seed}/{partition_id}/{server_round}".encode()))
    return g


def sample_batch(num_examples: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of one mini-batch: the first ``batch_size`` of a permutation drawn from ``gen``.

    A worker's ``k``-th local step uses the ``k``-th draw of :func:`round_generator`'s stream; anyone with the
    seed, the partition and the round redraws the same batch (the lab's label flipping does).
    """
    return torch.randperm(num_examples, generator=gen)[:batch_size]


def regularise_and_clip(model: nn.Module, weight_decay: float = 0.0, clip: float = 0.0) -> float:
    r"""Worker-side weight decay, then clipping, on the gradients of ``model``'s *parameters* (in place).

    :math:`g \leftarrow g + \lambda\theta` (the gradient of :math:`\tfrac{\lambda}{2}\|\theta\|^2` added to
    the loss), then, if ``clip > 0`` and :math:`\|g\| > c` (the norm over all parameters together),
    :math:`g \leftarrow g \cdot c / \|g\|`: the order of the authors' lab's scripts (LPD-EPFL/
    ByzantineMomentum ``attack.py``: L2 is in the loss, then ``if grad_norm > gradient_clip:
    grad.mul_(gradient_clip / grad_norm)`` on the flat gradient). Buffers (BatchNorm statistics) have no
    gradient and are never touched. Returns :math:`\|g\|` before clipping.

    Note: the lab's ``l2-regularize`` loss term is :math:`\lambda\|\theta\|` (``params.norm()``, not
    squared; ``experiments/loss.py`` in ByzantineMomentum and robust-collaborative-learning), whose
    gradient is :math:`\lambda\theta/\|\theta\|`; this function uses the usual :math:`\lambda\theta`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if weight_decay:
            p.grad.add_(p.detach(), alpha=weight_decay)
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
    if clip > 0 and norm > clip:
        for p in params:
            p.grad.mul_(clip / norm)
    return norm


def minibatch_gradient(
    model: nn.Module, data, cfg: ExperimentConfig, gen: torch.Generator, *, flip: bool = False
) -> float:
    """One mini-batch's gradient in ``model``'s ``.grad`` (worker decay and clipping applied); the data loss.

    The batch is :func:`sample_batch`'s next draw from ``gen``; ``flip`` trains on labels ``C - 1 - y``.
    """
    device = next(model.parameters()).device
    idx = sample_batch(len(data), cfg.batch_size, gen)
    x, y = data.images[idx].to(device), data.labels[idx].to(device)
    if flip:
        y = flip_labels(y, data.num_classes)
    model.zero_grad(set_to_none=False)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    regularise_and_clip(model, cfg.worker_weight_decay, cfg.worker_clip)
    return float(loss.detach())


def gradient_record(model: nn.Module, grads: dict[str, torch.Tensor] | None = None) -> ArrayRecord:
    """A gradient reply: each parameter's gradient (``grads`` if given, else ``.grad``), every other entry
    of the state (BatchNorm statistics, integer counters) as the model holds it."""
    params = dict(model.named_parameters())
    out = {}
    for key, value in model.state_dict().items():
        p = params.get(key)
        if p is None:
            out[key] = value.detach().clone()
        elif grads is not None:
            out[key] = grads[key].detach().clone()
        else:
            out[key] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    return ArrayRecord(torch_state_dict={k: v.cpu() for k, v in out.items()})


def worker_step(
    model: nn.Module,
    data,
    cfg: ExperimentConfig,
    gen: torch.Generator,
    *,
    flip: bool = False,
    local_lr: float | None = None,
) -> tuple[ArrayRecord, dict[str, float]]:
    """RESAM's worker computation on the current global model held by ``model``.

    ``local-steps = 1``: one mini-batch gradient (RESAM's DSGD), replied as a gradient
    (``resam-gradient`` = 1), with the model's buffers as they are after the forward pass (BatchNorm's
    running statistics: values, not gradients). ``local-steps = K > 1``, or ``mode = "model"`` (FedAvg-style
    clients): K local SGD steps with ``local_lr``; replies the trained weights and ``local-lr``, from which
    :func:`~resam_flower.clients.momentum_mod` derives the direction in ``gradient`` mode. Every step's
    gradient gets the worker-side weight decay (``weight-decay-at = "worker"``) and clipping
    (``worker-clip``) of :func:`regularise_and_clip`. ``flip`` trains on labels ``C - 1 - y`` (the
    label-flipping Byzantine behaviour).
    """
    model.train()
    losses = []
    weights_reply = cfg.local_steps > 1 or cfg.mode == "model"
    opt = torch.optim.SGD(model.parameters(), lr=local_lr) if weights_reply else None
    for _ in range(cfg.local_steps):
        losses.append(minibatch_gradient(model, data, cfg, gen, flip=flip))
        if opt is not None:
            opt.step()
    metrics = {
        "train-loss": sum(losses) / len(losses),
        "num-examples": float(min(len(data), cfg.batch_size) * cfg.local_steps),
    }
    if opt is None:
        metrics["resam-gradient"] = 1.0
        return gradient_record(model), metrics
    metrics["local-lr"] = float(local_lr)
    return ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()}), metrics


# -- who holds the data ----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 1000) -> dict[str, float]:
    """Accuracy (0..1) and mean cross-entropy of ``model`` on ``data``."""
    device = next(model.parameters()).device
    model.eval()
    correct, loss, n = 0, 0.0, len(data)
    for start in range(0, n, batch_size):
        x = data.images[start : start + batch_size].to(device)
        y = data.labels[start : start + batch_size].to(device)
        logits = model(x)
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1)}
