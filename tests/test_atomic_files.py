"""collapse_probe._utils.files: atomic writes leave the old file or the whole new one, never half."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collapse_probe._utils.files import atomic_path, atomic_write_bytes, atomic_write_text


def test_write_text_and_bytes_replace_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_bytes(b"old picture")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half a pic")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_file_gets_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.csv", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
