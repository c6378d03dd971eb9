"""evaluate, explain and report under user mistakes: bad --out, maps sharing a name, a map
evaluated on another dataset.

Each test asserts the exit code, that the message names the path and the fix, and that files
existing before are unchanged (checksums).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from softloc.cli import main
from softloc.data.places import write_places
from softloc.localize import build_map
from softloc.mapping import sha256_file
from softloc.models import create_model, save_model


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones included), by relative path."""
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def map_dir(street, tmp_path: Path) -> Path:
    model = save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")
    return build_map(model, street, tmp_path / "maps" / "gem", progress=False)


def commands(map_dir: Path, data: Path, out: Path) -> dict[str, list[str]]:
    """The three commands that write pictures or tables, with their --out."""
    return {
        "evaluate": ["-q", "evaluate", "--map", str(map_dir), "--data", str(data), "--out",
                     str(out)],
        "explain": ["-q", "explain", "failures", "--count", "1", "--map", str(map_dir),
                    "--data", str(data), "--out", str(out)],
        "report": ["-q", "report", str(map_dir), "--data", str(data), "--out", str(out)],
    }


def fail_if_a_map_is_opened(monkeypatch) -> None:
    def opened(*args, **kwargs):
        raise AssertionError("a map was opened before --out was checked")

    monkeypatch.setattr("softloc.mapping.Map.load", opened)


@pytest.mark.parametrize("command", ["evaluate", "explain", "report"])
def test_out_an_existing_file_fails_first(street, tmp_path, map_dir, command, monkeypatch,
                                          capsys) -> None:
    out = tmp_path / "results"
    out.write_text("my notes")
    fail_if_a_map_is_opened(monkeypatch)
    assert main(commands(map_dir, tmp_path, out)[command]) == 2
    err = capsys.readouterr().err
    assert f"{out} is a file, not a folder; choose another --out" in err
    assert out.read_text() == "my notes"


@pytest.mark.parametrize("command", ["evaluate", "explain", "report"])
def test_out_a_dataset_or_a_map_is_refused_untouched(street, tmp_path, map_dir, command,
                                                     monkeypatch, capsys) -> None:
    for out in (tmp_path, map_dir):  # the dataset itself, and the map
        before = checksums(out)
        fail_if_a_map_is_opened(monkeypatch)
        assert main(commands(map_dir, tmp_path, out)[command]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "nothing was written" in err and "--out" in err
        assert checksums(out) == before


@pytest.mark.parametrize("command", ["evaluate", "explain", "report"])
def test_a_full_disk_fails_first(street, tmp_path, map_dir, command, monkeypatch,
                                 capsys) -> None:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fail_if_a_map_is_opened(monkeypatch)
    monkeypatch.setattr("softloc.output_folders.tempfile.mkstemp", no_space)
    out = tmp_path / "out"
    assert main(commands(map_dir, tmp_path, out)[command]) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot write there (No space left on device)" in err
    assert "free space" in err
    assert not out.exists()


def test_evaluate_keeps_two_maps_sharing_a_folder_name(street, tmp_path, map_dir) -> None:
    model = tmp_path / "m.safetensors"
    first = build_map(model, street, tmp_path / "x" / "mapA", progress=False)
    second = build_map(model, street, tmp_path / "y" / "mapA", spacing=3.0, progress=False)
    assert main(["-q", "evaluate", "--map", str(first), "--map", str(second), "--data",
                 str(tmp_path), "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results) == ["x-mapA", "y-mapA"]
    assert results["x-mapA"] != results["y-mapA"]  # two maps, two sets of numbers


def test_pictures_may_join_pictures_or_an_evaluation(street, tmp_path, map_dir) -> None:
    pictures = tmp_path / "pictures"
    explain = commands(map_dir, tmp_path, pictures)["explain"]
    assert main(explain) == 0
    assert main(explain) == 0  # again into its own pictures
    assert (pictures / "failures.csv").is_file()
    evaluation = tmp_path / "eval"
    assert main(commands(map_dir, tmp_path, evaluation)["evaluate"]) == 0
    before = checksums(evaluation)
    assert main(commands(map_dir, tmp_path, evaluation)["explain"]) == 0
    after = checksums(evaluation)
    assert {k: after[k] for k in before} == before and "failures.csv" in after


def test_evaluating_a_map_on_another_dataset_warns(street, tmp_path, map_dir, caplog) -> None:
    far_root = tmp_path / "far"  # the same images, 1 km away
    shutil.copytree(tmp_path / "images", far_root / "images")
    write_places(dataclasses.replace(street, x=street.x + 1000.0), far_root / "places.csv")
    with caplog.at_level(logging.WARNING):
        assert main(commands(map_dir, far_root, tmp_path / "eval")["evaluate"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"built from images under {tmp_path}" in w and str(far_root) in w
               and "check --data" in w for w in warnings)
    assert any("no query lies within 25 m of any reference" in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the map's own dataset: no warning
        assert main(commands(map_dir, tmp_path, tmp_path / "eval2")["evaluate"]) == 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_report_rebuilds_a_cached_map_that_no_longer_loads(street, tmp_path) -> None:
    from softloc.report.collect import resolve_runs
    from softloc.train import FINAL_MODEL

    run = tmp_path / "run"
    save_model(create_model("small_gem", image_size=(32, 24)), run / FINAL_MODEL)
    out = tmp_path / "report"
    (built,) = resolve_runs([run], street, out, progress=False)
    manifest_path = built.map_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": 1}))  # an older map
    (again,) = resolve_runs([run], street, out, progress=False)
    assert again.map_dir == built.map_dir
    assert json.loads(manifest_path.read_text())["format_version"] == 2  # rebuilt, loads
