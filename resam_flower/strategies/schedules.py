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
      counted from round 1 so that ``γ_1 = lr``).
    """

    lr: float
    kind: str = "constant"
    step_size: int = 100
    gamma: float = 0.1
    decay: float = 100.0

    def __post_init__(self) -> None:
        check_float("lr", self.lr, low=0.0, low_open=True)
        if self.kind not in ("constant", "step", "inverse"):
            raise ValueError(f"lr schedule must be constant, step or inverse, got {self.kind!r}")
        check_int("step_size", self.step_size, low=1)
        check_float("gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        check_float("decay", self.decay, low=0.0, low_open=True)

    def __call__(self, server_round: int) -> float:
        t = max(int(server_round), 1) - 1
        if self.kind == "step":
            return self.lr * self.gamma ** (t // self.step_size)
        if self.kind == "inverse":
            return self.lr / (1.0 + t / self.decay)
        return self.lr

    def describe(self) -> str:
        if self.kind == "step":
            return f"step(lr={self.lr}, step_size={self.step_size}, gamma={self.gamma})"
        if self.kind == "inverse":
            return f"inverse(lr={self.lr}, decay={self.decay})"
        return f"constant(lr={self.lr})"


def build_schedule(lr: float | LRSchedule, kind: str = "constant", **params: float) -> LRSchedule:
    """An :class:`LRSchedule` from a base rate and a kind (or an existing schedule, returned as is)."""
    if isinstance(lr, LRSchedule):
        return lr
    return LRSchedule(lr=lr, kind=kind, **{k.replace("-", "_"): v for k, v in params.items()})
