"""The memory-mapped image cache: built once, reused, invalidated, never used half-written."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from softloc.data import image_cache
from softloc.data.image_cache import (
    cache_bytes,
    cache_files,
    check_cache,
    ensure_cache,
    places_checksum,
    store_for_places,
)
from softloc.data.images import ImageError, ImageStore, load_image
from softloc.data.places import read_places, write_places

SIZE = (16, 12)


def _decoded(places, size=SIZE) -> np.ndarray:
    return np.stack([load_image(places.image_path(i), size) for i in range(len(places))])


def test_cache_is_built_reused_and_equal_to_decoding(street, caplog) -> None:
    caplog.set_level(logging.INFO, logger="softloc.data.image_cache")
    store = store_for_places(street, SIZE)
    files = cache_files(street.root, SIZE)
    assert files.data == street.root / "cache" / "16x12.u8"
    assert files.data.stat().st_size == cache_bytes(len(street), SIZE) == len(street) * 16 * 12 * 3
    manifest = json.loads(files.manifest.read_text())
    assert manifest["rows"] == len(street) and (manifest["width"], manifest["height"]) == SIZE
    np.testing.assert_array_equal(store.images(np.arange(len(street))), _decoded(street))
    assert "building the image cache" in caplog.text
    caplog.clear()
    built = files.data.stat().st_mtime_ns
    store_for_places(street, SIZE)  # reused: nothing rebuilt
    assert files.data.stat().st_mtime_ns == built and "building" not in caplog.text
    other = store_for_places(street, (20, 10))  # another size: its own file
    assert other.cache is not None and cache_files(street.root, (20, 10)).data.is_file()


def test_changed_places_invalidate_the_cache_and_it_is_rebuilt(street, caplog) -> None:
    caplog.set_level(logging.INFO, logger="softloc.data.image_cache")
    store_for_places(street, SIZE)
    # a new places.csv: rows dropped and the order changed
    changed = street.subset(np.arange(len(street))[::-2])
    write_places(changed, street.root / "places.csv")
    changed = read_places(street.root)
    caplog.clear()
    store = store_for_places(changed, SIZE)
    assert "places.csv lists other images" in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(store.images(np.arange(len(changed))), _decoded(changed))
    # a path changed, same row count: invalid too
    files = cache_files(street.root, SIZE)
    renamed = changed.path.copy()
    renamed[0] = renamed[1]
    problem = check_cache(files, len(changed), SIZE, places_checksum(renamed))
    assert problem is not None and "places.csv" in problem


def test_a_build_stopped_by_a_bad_image_leaves_no_cache(street) -> None:
    bad = 7
    street.image_path(bad).write_bytes(b"not a png")
    where = [f"places.csv, line {i + 2}" for i in range(len(street))]
    with pytest.raises(ImageError, match=rf"places.csv, line {bad + 2}: .*{bad:05d}.png: cannot"):
        store_for_places(street, SIZE, where=where)
    files = cache_files(street.root, SIZE)
    assert not files.manifest.exists() and not files.data.exists()
    assert list(files.data.parent.iterdir()) == []  # the temporary array is gone too


_KILLED_BUILD = """
import sys, time
from pathlib import Path
from softloc.data import image_cache, images
from softloc.data.places import read_places

places = read_places(sys.argv[1])
flag = Path(sys.argv[2])
real = images.load_image

def slow(path, size=None):
    flag.touch()
    time.sleep(0.05)
    return real(path, size)

images.load_image = slow
image_cache.store_for_places(places, (16, 12))
"""


def test_a_killed_build_is_never_used_half_written(street, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(Path(image_cache.__file__).parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BUILD, str(street.root), str(flag)], env=env
    )
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # some rows written, most not (the build takes ~len(street) x 50 ms)
    process.send_signal(signal.SIGKILL)
    process.wait()
    files = cache_files(street.root, SIZE)
    leftovers = list(files.data.parent.iterdir())
    assert leftovers and not files.manifest.exists() and not files.data.exists()
    assert check_cache(files, len(street), SIZE, places_checksum(street.path)) is not None
    store = store_for_places(street, SIZE)  # the next run builds a whole one
    np.testing.assert_array_equal(store.images(np.arange(len(street))), _decoded(street))


def test_an_unwritable_cache_folder_falls_back_to_decoding(street, tmp_path: Path,
                                                           caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = store_for_places(street, SIZE, cache_dir=blocker / "cache")
    assert store.cache is None and "decoding the images on every read" in caplog.text
    np.testing.assert_array_equal(store.images([0, 5]), _decoded(street)[[0, 5]])


def test_too_little_disk_is_said_before_decoding(street, monkeypatch, caplog) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda _: usage(10**6, 0, 10**6))
    calls = []

    def decode(row: int) -> np.ndarray:
        calls.append(row)
        return np.zeros((12, 16, 3), dtype=np.uint8)

    files = cache_files(street.root, SIZE)
    got = ensure_cache(files, len(street), SIZE, places_checksum(street.path), decode)
    assert got is None and calls == []
    assert "the image cache needs" in caplog.text and "GB are free" in caplog.text


def test_store_rejects_a_cache_of_another_shape(street) -> None:
    store = store_for_places(street, SIZE)
    with pytest.raises(ValueError, match="holds"):
        ImageStore(store.paths[:-1], SIZE, cache=store.cache)


def test_cache_build_command(street, capsys) -> None:
    from softloc.cli import main

    street.image_path(3).write_bytes(b"broken")
    assert main(["-q", "cache", "build", "--data", str(street.root), "--size", "16x12"]) == 2
    assert f"places.csv, line 5: {street.image_path(3)}: cannot decode" in capsys.readouterr().err
    street.image_path(3).unlink()
    keep = np.flatnonzero(street.path != street.path[3])
    write_places(street.subset(keep), street.root / "places.csv")
    assert main(["-q", "cache", "build", "--data", str(street.root), "--size", "16x12"]) == 0
    assert "16x12.u8 (0.00 GB): built" in capsys.readouterr().out
    assert main(["-q", "cache", "build", "--data", str(street.root), "--size", "16x12"]) == 0
    assert "already valid" in capsys.readouterr().out
    assert main(["-q", "cache", "build", "--data", str(street.root), "--size", "16by12"]) == 2
