"""Experiments on top of the default app: TOML sweeps, resumable runner, plots, reports, the κ estimator.

``resam sweep simulations/FILE.toml`` (:mod:`.runner`), ``resam plot`` (:mod:`.plots`), ``resam report``
(:mod:`.report`), ``resam kappa`` (:mod:`.kappa`); the file format is documented in :mod:`.grid`.
"""

from .grid import Cell, Sweep, expand, load_sweep
from .runner import CellResult, is_finished, run_sweep

__all__ = ["Cell", "Sweep", "CellResult", "expand", "load_sweep", "run_sweep", "is_finished"]
