"""``softloc map import``: a map from an .npy of descriptors and a places CSV."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from softloc.cli import main
from softloc.localize import build_map
from softloc.mapping import Map
from softloc.models import create_model, save_model

_SPEC = importlib.util.spec_from_file_location("shared_fixture_makers",
                                               Path(__file__).parent / "conftest.py")
_MAKERS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MAKERS)


@pytest.fixture
def drive(tmp_path: Path):
    """A places CSV of one drive (no images needed) and random unit descriptors for it."""
    table = _MAKERS.make_drive_table(tmp_path / "data", {"reference": "overcast"},
                                     write_images=False)
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(len(table), 16)).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "unit.npy", raw / np.linalg.norm(raw, axis=1, keepdims=True))
    return table, raw


def run(*args: object) -> int:
    return main(["-q", "map", "import", *map(str, args)])


def test_import_gives_a_map_whose_rows_find_themselves(drive, tmp_path: Path) -> None:
    table, raw = drive
    assert run("--descriptors", tmp_path / "unit.npy", "--places",
               tmp_path / "data" / "places.csv", "--out", tmp_path / "map") == 0
    the_map = Map.load(tmp_path / "map", verify=True)  # sizes and checksums of every file
    assert np.array_equal(the_map.descriptors, np.load(tmp_path / "unit.npy"))
    assert np.array_equal(the_map.places.path, table.path)
    assert np.allclose(the_map.places.xy, table.xy)
    scores, rows = the_map.search(the_map.descriptors[[0, 17, 40]], 1)
    assert rows[:, 0].tolist() == [0, 17, 40] and np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_normalize_divides_each_row_by_its_norm(drive, tmp_path: Path, capsys) -> None:
    _, raw = drive
    places = tmp_path / "data" / "places.csv"
    assert run("--descriptors", tmp_path / "raw.npy", "--places", places, "--out",
               tmp_path / "map") == 2
    err = capsys.readouterr().err
    assert "raw.npy" in err and "L2-normalise" in err and not (tmp_path / "map").exists()
    assert run("--descriptors", tmp_path / "raw.npy", "--places", places, "--out",
               tmp_path / "map", "--normalize", "--dtype", "float16") == 0
    stored = Map.load(tmp_path / "map").descriptors
    assert stored.dtype == np.float16
    expected = np.array([row / np.sqrt(np.sum(row.astype(np.float64) ** 2)) for row in raw])
    assert np.allclose(stored, expected, atol=1e-3)


def test_a_built_map_imported_again_searches_the_same(tmp_path: Path) -> None:
    table = _MAKERS.make_drive_table(tmp_path / "data", {"reference": "overcast"},
                                     size=(16, 12))
    model = save_model(create_model("small_gem", image_size=(16, 12)), tmp_path / "m.safetensors")
    built = Map.load(build_map(model, table, tmp_path / "built", progress=False))
    assert run("--descriptors", tmp_path / "built" / "descriptors.npy", "--places",
               tmp_path / "built" / "places.csv", "--out", tmp_path / "imported") == 0
    imported = Map.load(tmp_path / "imported", verify=True)
    queries = built.descriptors[::5]
    for got, want in zip(imported.search(queries, 5), built.search(queries, 5), strict=True):
        assert np.array_equal(got, want)
    assert np.array_equal(imported.places.path, built.places.path)


@pytest.mark.parametrize("content,message", [
    (np.ones((5, 16), dtype=np.float32), "5 descriptors but"),
    (np.ones((80, 4), dtype=np.int32), "must be floating point"),
    (np.ones(80, dtype=np.float32), "shape (N, D)"),
    (None, "not a readable .npy"),
])
def test_bad_descriptor_files_are_refused_by_name(
    drive, tmp_path: Path, capsys, content, message
) -> None:
    bad = tmp_path / "bad.npy"
    if content is None:
        bad.write_text("not numpy")
    else:
        np.save(bad, content)
    assert run("--descriptors", bad, "--places", tmp_path / "data" / "places.csv", "--out",
               tmp_path / "map") == 2
    err = capsys.readouterr().err
    assert "bad.npy" in err and message in err, err
    assert not (tmp_path / "map").exists()


def test_out_holding_other_files_is_refused_before_reading(drive, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert run("--descriptors", tmp_path / "unit.npy", "--places",
               tmp_path / "data" / "places.csv", "--out", out) == 2
    assert "nothing was written" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_zero_logs_progress_under_torchrun(drive, tmp_path: Path, rank: str) -> None:
    """torchrun's other ranks print warnings and errors only: N copies of every INFO line
    would bury what rank 0 says (the command here needs no collective, so one process can
    play rank 1)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank,
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "SOFTLOC_DIST_TIMEOUT_S": "5"}
    done = subprocess.run(
        [sys.executable, "-m", "softloc", "map", "import", "--descriptors",
         str(tmp_path / "unit.npy"), "--places", str(tmp_path / "data" / "places.csv"),
         "--out", str(tmp_path / f"map{rank}")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert ("INFO softloc.mapping: built a flat map" in done.stderr) == (rank == "0")
