"""The output-folder claim: missing, empty or same-kind folders pass; anything else is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from softloc.output_folders import OutputFolderError, claim_output_folder, folder_kinds


def test_missing_and_empty_folders_are_free(tmp_path: Path) -> None:
    assert claim_output_folder(tmp_path / "new" / "deeper", "map") is False
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".stale.tmp").write_text("x")  # hidden litter does not count
    assert claim_output_folder(tmp_path / "empty", "map") is False


def test_same_kind_is_reported_held(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    assert folder_kinds(tmp_path) == ["map"]
    assert claim_output_folder(tmp_path, "map") is True


@pytest.mark.parametrize(
    ("existing", "kind", "held"),
    [
        ("places.csv", "map", "dataset"),
        ("model.safetensors", "map", "training run"),
        ("manifest.json", "training run", "map"),
        ("holiday.jpg", "dataset", "files softloc did not write"),
    ],
)
def test_other_content_is_refused_untouched(
    tmp_path: Path, existing: str, kind: str, held: str
) -> None:
    target = tmp_path / existing
    target.write_bytes(b"precious")
    with pytest.raises(OutputFolderError, match=held) as info:
        claim_output_folder(tmp_path, kind)
    assert str(tmp_path) in str(info.value) and "--out" in str(info.value)
    assert target.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == [existing]


def test_allowed_companions(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html>")
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(OutputFolderError):
        claim_output_folder(tmp_path, "report")
    assert claim_output_folder(tmp_path, "report", allow=("evaluation",)) is True


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "results"
    path.write_text("mine")
    with pytest.raises(OutputFolderError, match="is a file"):
        claim_output_folder(path, "evaluation")
    with pytest.raises(OutputFolderError, match="is a file"):
        claim_output_folder(path / "sub", "evaluation")
    assert path.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_location(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match="cannot write"):
            claim_output_folder(locked / "out", "evaluation")
    finally:
        locked.chmod(0o700)


def test_unwritable_location_fails_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputFolderError, match="Read-only file system") as info:
        claim_output_folder(tmp_path / "out", "evaluation")
    assert "writable --out" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_prepared_dataset_is_one_dataset(tmp_path: Path) -> None:
    for name in ("places.csv", "prepare.json", "report.json"):
        (tmp_path / name).write_text("x")
    assert folder_kinds(tmp_path) == ["dataset"]
    with pytest.raises(OutputFolderError, match=r"holds dataset \("):
        claim_output_folder(tmp_path, "map")


def test_a_map_is_one_map(tmp_path: Path) -> None:
    for name in ("manifest.json", "places.csv", "model.safetensors", "model.json"):
        (tmp_path / name).write_text("x")
    assert folder_kinds(tmp_path) == ["map"]
    (tmp_path / "config.yaml").write_text("x")  # a training run and a map mixed: both named
    assert folder_kinds(tmp_path) == ["training run", "map"]
