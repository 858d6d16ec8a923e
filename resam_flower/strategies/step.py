"""RESAM's server step as pure functions (``torch.optim``'s functional style; the strategy is a thin class).

:func:`resam_step` is the update of the parameters, :func:`robust_buffers` the update of the model's
buffers (BatchNorm's running statistics), which are values reported by the workers, not gradients.
"""

from __future__ import annotations

import math

import torch

__all__ = ["resam_step", "robust_buffers"]


def resam_step(
    theta: torch.Tensor,
    aggregate: torch.Tensor,
    *,
    lr: float,
    weight_decay: float = 0.0,
    max_update_norm: float | None = None,
    mode: str = "gradient",
) -> tuple[torch.Tensor | None, float, str | None]:
    r"""One server step; returns ``(new_theta, aggregate_norm, None)`` or ``(None, norm, reason)``.

    ``gradient`` mode (RESAM): :math:`\theta_{t+1} = \theta_t - \gamma_t (R_t + \lambda \theta_t)`, with
    :math:`R_t` the resilient average of the workers' momentums. ``model`` mode: :math:`R_t` is the
    resilient average of the workers' updates (trained weights minus :math:`\theta_t`) and
    :math:`\theta_{t+1} = \theta_t + \gamma_t R_t` (weight decay, if any, belongs to the workers then).
    With ``max_update_norm`` :math:`c`, :math:`R_t` is first scaled to norm at most :math:`c`.

    Parameters
    ----------
    theta, aggregate : torch.Tensor
        The parameters :math:`\theta_t` and :math:`R_t`, both ``(d,)``.
    lr : float
        :math:`\gamma_t`.
    weight_decay : float
        :math:`\lambda` (gradient mode only).
    max_update_norm : float, optional
        Clip :math:`\|R_t\|` to this value.
    mode : {"gradient", "model"}

    A non-finite aggregate or a step that overflows returns ``None`` and the reason: the caller keeps
    :math:`\theta_t`. The norm is computed in float64 (float32 squares overflow at 1.8e19).
    """
    aggregate = aggregate.to(theta.dtype)
    norm = float(torch.linalg.vector_norm(aggregate, dtype=torch.float64))
    if not math.isfinite(norm):
        return None, norm, "aggregate is not finite"
    if max_update_norm is not None and norm > max_update_norm:
        aggregate = aggregate * (max_update_norm / norm)
    if mode == "gradient":
        direction = aggregate if weight_decay == 0.0 else aggregate + weight_decay * theta
        new_theta = theta - lr * direction
    elif mode == "model":
        new_theta = theta + lr * aggregate
    else:
        raise ValueError(f"mode must be 'gradient' or 'model', got {mode!r}")
    if not bool(torch.isfinite(new_theta).all()):
        return None, norm, "the step overflows the model's dtype"
    return new_theta, norm, None


def robust_buffers(values: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of the buffers the workers report, ``(n, b) -> (b,)``.

    Buffers such as BatchNorm's running mean and variance are statistics of each worker's data, not
    gradients: they are neither stepped nor decayed. The median of the reported values (mean of the two
    middle values for an even count) is robust to a minority of Byzantine reports, and equals the common
    value when the honest workers agree.
    """
    if values.shape[0] == 0:
        raise ValueError("no buffer values to aggregate")
    sorted_values = values.sort(dim=0).values
    n = values.shape[0]
    if n % 2:
        return sorted_values[n // 2].clone()
    return (sorted_values[n // 2 - 1] + sorted_values[n // 2]) / 2
