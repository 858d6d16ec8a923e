"""Run outputs: ``<results-dir>/<run-name>/`` with ``config.json``, ``metrics.csv`` and ``summary.json``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .._files import atomic_open

__all__ = ["write_run", "atomic_write_text"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (no half-written file on a crash)."""
    with atomic_open(path, text=True) as fh:
        fh.write(text)


def write_run(
    run_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    """Write the three result files of one run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str))
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with atomic_open(run_dir / "metrics.csv", text=True, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str))
