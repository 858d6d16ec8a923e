"""Server learning-rate schedules ``γ_t`` for θ_{t+1} = θ_t − γ_t·R_t (t = server round, from 1)."""

from __future__ import annotations

from dataclasses import dataclass

from ..aggregators.base import check_float, check_int

__all__ = ["LRSchedule", "build_schedule"]


@dataclass(frozen=True)
class LRSchedule:
    """``γ_t`` for ``kind`` in:

    * ``constant``: ``γ_t = lr``;
    * ``step``: ``γ_t = lr · gamma^{⌊(t-1)/step_size⌋}`` (decays every ``step_size`` rounds);
    * ``inverse``: ``γ_t = lr / (1 + (t-1)/decay)`` (the ``1/(1 + t/decay)`` schedule of the authors' lab,
      counted from round 1 so that ``γ_1 = lr``);
    * ``debiased``: ``γ_t = lr / (1 - beta^t)``, the workers' momentum ``beta``: RESAM's momentum
      ``m_t = β m_{t-1} + (1-β) g_t`` started at 0 has weight ``1 - β^t`` on the gradients (Adam's bias
      correction, Kingma & Ba 2015), so with β = 0.99 the first ~100 steps are short; dividing by it
      gives every round the step ``lr`` (``beta = 0``: ``constant``). Exact when every worker has replied
      every round (full participation, as in the lab's protocol); with sampling a worker's momentum is
      younger than ``t`` and the correction is too small for it.
    """

    lr: float
    kind: str = "constant"
    step_size: int = 100
    gamma: float = 0.1
    decay: float = 100.0
    beta: float = 0.0

    def __post_init__(self) -> None:
        check_float("lr", self.lr, low=0.0, low_open=True)
        if self.kind not in KINDS:
            raise ValueError(f"lr schedule must be one of {', '.join(KINDS)}, got {self.kind!r}")
        check_int("step_size", self.step_size, low=1)
        check_float("gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        check_float("decay", self.decay, low=0.0, low_open=True)
        check_float("beta", self.beta, low=0.0, high=1.0, high_open=True)

    def __call__(self, server_round: int) -> float:
        t = max(int(server_round), 1) - 1
        if self.kind == "step":
            return self.lr * self.gamma ** (t // self.step_size)
        if self.kind == "inverse":
            return self.lr / (1.0 + t / self.decay)
        if self.kind == "debiased":
            return self.lr / (1.0 - self.beta ** (t + 1))
        return self.lr

    def describe(self) -> str:
        if self.kind == "step":
            return f"step(lr={self.lr}, step_size={self.step_size}, gamma={self.gamma})"
        if self.kind == "inverse":
            return f"inverse(lr={self.lr}, decay={self.decay})"
        if self.kind == "debiased":
            return f"debiased(lr={self.lr}, beta={self.beta})"
        return f"constant(lr={self.lr})"


#: The schedule kinds of :class:`LRSchedule`.
KINDS = ("constant", "step", "inverse", "debiased")


def build_schedule(lr: float | LRSchedule, kind: str = "constant", **params: float) -> LRSchedule:
    """An :class:`LRSchedule` from a base rate and a kind (or an existing schedule, returned as is)."""
    if isinstance(lr, LRSchedule):
        return lr
    return LRSchedule(lr=lr, kind=kind, **{k.replace("-", "_"): v for k, v in params.items()})
