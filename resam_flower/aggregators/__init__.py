"""Resilient averaging rules and pre-aggregators: pure torch, ``(n, d) -> (d,)``.

Use :func:`build` with a spec string (``"nnm+cwtm"``) or import the classes directly.
"""

from .base import Aggregator, NonFiniteInputError, PreAggregator
from .pipeline import Pipeline
from .registry import PRE_AGGREGATORS, RULES, available, build, resolve

__all__ = [
    "Aggregator",
    "PreAggregator",
    "Pipeline",
    "NonFiniteInputError",
    "build",
    "available",
    "resolve",
    "RULES",
    "PRE_AGGREGATORS",
]
