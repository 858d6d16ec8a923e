"""atomic_open: the one atomic-write helper (checkpoints, momentum, credentials, results, data cache)."""

from __future__ import annotations

import os
import stat

import pytest

from resam_flower._files import atomic_open


def test_the_new_content_replaces_the_file_with_the_given_mode(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    path.parent.mkdir()
    path.write_bytes(b"old")
    os.chmod(path, 0o666)
    with atomic_open(path, mode=0o600, fsync=True) as fh:
        fh.write(b"new")
        assert path.read_bytes() == b"old"  # readers see the old file until the rename
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    with atomic_open(tmp_path / "t.csv", text=True, newline="") as fh:
        fh.write("a\r\nb")
    assert (tmp_path / "t.csv").read_bytes() == b"a\r\nb"


def test_an_error_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"), atomic_open(path) as fh:
        fh.write(b"half")
        raise OSError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
