"""Which code produced a result: the package version, and the git commit when run from a source checkout.

Every run's ``summary.json`` records :func:`code_version` (key ``code``), and ``resam export`` keeps it per
cell, so a figure can name the commits behind its numbers: the rules' arithmetic can change bits between
commits (a different summation order is a different rounding), and a rerun is only bit-identical on the
same code.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from . import __version__

__all__ = ["code_version"]

PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``"0.1.0"`` installed; ``"0.1.0+git.<12-hex commit>"`` in a checkout, ``".dirty"`` appended when
    tracked files differ from that commit (untracked files are ignored)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != PACKAGE_DIR.parent.resolve():
        return __version__  # installed (no repository) or vendored in another project's repository
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return __version__
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{__version__}+git.{commit}" + (".dirty" if dirty else "")
