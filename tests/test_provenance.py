"""``code_version``: the package version, plus the git commit (and whether it was changed) in a checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from resam_flower import __version__, _provenance


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout holding a ``resam_flower`` package, which ``code_version`` is told it runs from."""
    pkg = tmp_path / "repo" / "resam_flower"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    _git(tmp_path / "repo", "init", "-q")
    _git(tmp_path / "repo", "add", ".")
    _git(tmp_path / "repo", "commit", "-q", "-m", "one")
    monkeypatch.setattr(_provenance, "PACKAGE_DIR", pkg)
    _provenance.code_version.cache_clear()
    yield tmp_path / "repo"
    _provenance.code_version.cache_clear()


def test_a_clean_checkout_names_its_commit(checkout):
    sha = _git(checkout, "rev-parse", "HEAD")[:12]
    assert _provenance.code_version() == f"{__version__}+git.{sha}"


def test_changed_tracked_files_mark_it_dirty_untracked_ones_do_not(checkout):
    (checkout / "notes.txt").write_text("untracked\n")
    sha = _git(checkout, "rev-parse", "HEAD")[:12]
    assert _provenance.code_version() == f"{__version__}+git.{sha}"
    (checkout / "resam_flower" / "__init__.py").write_text("x = 2\n")
    _provenance.code_version.cache_clear()
    assert _provenance.code_version() == f"{__version__}+git.{sha}.dirty"


def test_outside_a_checkout_or_in_another_project_only_the_version(tmp_path, monkeypatch):
    installed = tmp_path / "site-packages" / "resam_flower"
    installed.mkdir(parents=True)
    monkeypatch.setattr(_provenance, "PACKAGE_DIR", installed)
    _provenance.code_version.cache_clear()
    assert _provenance.code_version() == __version__
    # a package vendored inside some other project's repository: that repository's commit is not ours
    other = tmp_path / "other"
    (other / "vendor" / "resam_flower").mkdir(parents=True)
    (other / "README").write_text("other project\n")
    _git(other, "init", "-q")
    _git(other, "add", ".")
    _git(other, "commit", "-q", "-m", "other")
    monkeypatch.setattr(_provenance, "PACKAGE_DIR", other / "vendor" / "resam_flower")
    _provenance.code_version.cache_clear()
    assert _provenance.code_version() == __version__
    _provenance.code_version.cache_clear()
