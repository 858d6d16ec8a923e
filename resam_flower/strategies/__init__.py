"""Flower Message-API strategies: :class:`ResilientAveraging` (RESAM's server) and its wrappers.

Wrappers add a behaviour around any RESAM strategy, as Flower's differential-privacy wrappers do:
:class:`SimulatedAdversary` (an omniscient adversary, simulation only) and :class:`Checkpointing`
(checkpoint and resume). ``resam_step`` is the server step as a pure function.
"""

from .adversary import SimulatedAdversary, spread_metrics
from .checkpoint import Checkpointer, Checkpointing
from .resilient_averaging import ResilientAveraging
from .rounds import AttackNotRunError, NoProgressError, StrategyWrapper, core_of
from .schedules import LRSchedule, build_schedule
from .step import resam_step, robust_buffers
from .validation import Screened, reply_kind_error, screen_replies

__all__ = [
    "ResilientAveraging",
    "SimulatedAdversary",
    "Checkpointing",
    "Checkpointer",
    "StrategyWrapper",
    "NoProgressError",
    "AttackNotRunError",
    "core_of",
    "spread_metrics",
    "resam_step",
    "robust_buffers",
    "LRSchedule",
    "build_schedule",
    "Screened",
    "screen_replies",
    "reply_kind_error",
]
