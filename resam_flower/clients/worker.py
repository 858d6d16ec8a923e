"""Moved: the default app's worker is :mod:`resam_flower.app.worker` (re-exported here for old imports)."""

from ..app.worker import evaluate_handler, make_client_app, train

__all__ = ["train", "evaluate_handler", "make_client_app"]
