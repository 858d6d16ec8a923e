"""Flower Message-API strategies: :class:`ResilientAveraging` (RESAM's server)."""

from .resilient_averaging import AdversaryHook, ResilientAveraging
from .schedules import LRSchedule, build_schedule
from .validation import Screened, screen_replies

__all__ = [
    "ResilientAveraging",
    "AdversaryHook",
    "LRSchedule",
    "build_schedule",
    "Screened",
    "screen_replies",
]
