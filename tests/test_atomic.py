from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from softloc.atomic import atomic_path, write_json, write_text


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "sub" / "b.json", {"x": 1})
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == '{\n  "x": 1\n}\n'
