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
from ..models import build_model
from .config import ExperimentConfig

__all__ = [
    "resolve_device",
    "model_for",
    "partition_for",
    "test_split",
    "worker_step",
    "evaluate",
    "round_generator",
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
    """Compute the run's split once, into the on-disk cache the client processes read it from."""
    partition_indices(
        cfg.dataset,
        num_partitions or cfg.num_clients,
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
    (``resam-gradient`` = 1). ``local-steps = K > 1``, or ``mode = "model"`` (FedAvg-style clients): K local
    SGD steps with ``local_lr``; replies the trained weights and ``local-lr``, from which
    :func:`~resam_flower.clients.momentum_mod` derives the direction in ``gradient`` mode.
    ``flip`` trains on labels ``C - 1 - y`` (the label-flipping Byzantine behaviour).
    """
    device = next(model.parameters()).device
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    n = len(data)
    losses = []
    weights_reply = cfg.local_steps > 1 or cfg.mode == "model"
    opt = torch.optim.SGD(model.parameters(), lr=local_lr) if weights_reply else None
    for _ in range(cfg.local_steps):
        idx = torch.randperm(n, generator=gen)[: cfg.batch_size]
        x, y = data.images[idx].to(device), data.labels[idx].to(device)
        if flip:
            y = flip_labels(y, data.num_classes)
        model.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        losses.append(float(loss.detach()))
        if opt is not None:
            opt.step()
    metrics = {
        "train-loss": sum(losses) / len(losses),
        "num-examples": float(min(n, cfg.batch_size) * cfg.local_steps),
    }
    state = model.state_dict()
    if opt is None:
        grads = dict(model.named_parameters())
        out = {}
        for key, value in state.items():
            p = grads.get(key)
            if p is not None:
                out[key] = p.grad.detach().clone()
            elif value.is_floating_point():
                out[key] = torch.zeros_like(value)
            else:
                out[key] = value.detach().clone()
        metrics["resam-gradient"] = 1.0
        return ArrayRecord(torch_state_dict={k: v.cpu() for k, v in out.items()}), metrics
    metrics["local-lr"] = float(local_lr)
    return ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in state.items()}), metrics


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
