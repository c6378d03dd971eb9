"""Maps under faults: kills and full disks during a rebuild, damaged files, wrong --out.

Each test asserts the exit code (or the error), that the message names the file and the fix,
and that what existed before is unchanged (checksums of every file).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from softloc.atomic import _sweep_once, temporary_prefix, write_text
from softloc.cli import main
from softloc.localize import build_map
from softloc.mapping import (
    DESCRIPTORS_FILE,
    INDEX_FILE,
    KILL_POINT_ENV,
    MANIFEST_FILE,
    Map,
    MapError,
    sha256_file,
)
from softloc.models import create_model, save_model

SRC = Path(__file__).resolve().parents[2] / "src"


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones included), by relative path."""
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_siblings(folder: Path) -> list[str]:
    """Hidden entries beside ``folder`` that belong to it (temporaries of a save)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def model(tmp_path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_model(create_model("small_gem", image_size=(32, 24)),
                      tmp_path / f"model{seed}.safetensors")


@pytest.fixture
def old_map(street, tmp_path: Path) -> Path:
    """A complete map of the street built with model 0."""
    return build_map(model(tmp_path, 0), street, tmp_path / "map", progress=False)


def cli_build(model_path: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "map", "build", "--model", str(model_path), "--data", str(data), "--out",
            str(out), *extra]


# A rebuild of the map by Map.save, as `map build` does it (the subprocess skips importing
# torch: a kill test then costs a second, not twenty).
REBUILD = """
import sys
import numpy as np
from softloc.mapping import Map
map_dir, model = sys.argv[1], sys.argv[2]
old = Map.load(map_dir)
new = Map.build(np.ascontiguousarray(old.descriptors[::-1]), old.places, {"source": model})
files = {"model.safetensors": model, "model.json": model.replace(".safetensors", ".json")}
new.save(map_dir, overwrite=True, model_files=files)
"""


@pytest.mark.parametrize("stage", ["descriptors", "files", "manifest", "aside"])
def test_a_killed_rebuild_leaves_the_old_map_intact(street, tmp_path, old_map, stage) -> None:
    before = checksums(old_map)
    new_model = model(tmp_path, 1)
    env = {**os.environ, KILL_POINT_ENV: f"map:{stage}",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", REBUILD, str(old_map), str(new_model)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert hidden_siblings(old_map)  # the kill left its temporaries
    loaded = Map.load(old_map, verify=True)  # renames a map left aside back, removes the rest
    assert checksums(old_map) == before
    assert hidden_siblings(old_map) == []
    assert loaded.model_meta["source"].endswith("model0.safetensors")
    # the next build completes, and the map then holds the new model
    assert main(cli_build(new_model, tmp_path, old_map)) == 0
    manifest = json.loads((old_map / MANIFEST_FILE).read_text())
    assert manifest["files"]["model.safetensors"]["sha256"] == sha256_file(new_model)
    assert sha256_file(old_map / "model.safetensors") == sha256_file(new_model)


def test_a_full_disk_during_a_rebuild_is_exit_2_and_keeps_the_old_map(
    street, tmp_path, old_map, monkeypatch, capsys
) -> None:
    before = checksums(old_map)

    def no_space(source, target, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr("softloc.mapping.shutil.copyfile", no_space)
    assert main(cli_build(model(tmp_path, 1), tmp_path, old_map)) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Free space" in err
    assert "model.safetensors" in err and "old map is unchanged" in err
    assert checksums(old_map) == before and hidden_siblings(old_map) == []
    Map.load(old_map, verify=True)


def test_a_mixed_map_is_refused(street, tmp_path, old_map) -> None:
    """The issue's mixed map: new files beside an old model copy (the result of the old save)."""
    other = build_map(model(tmp_path, 1), street, tmp_path / "other", progress=False)
    shutil.copyfile(other / "model.safetensors", old_map / "model.safetensors")
    with pytest.raises(MapError, match=r"model\.safetensors: checksum mismatch.*map build"):
        Map.load(old_map)


@pytest.mark.parametrize("kind", ["dataset", "training run", "foreign files"])
def test_map_build_refuses_an_out_that_holds_something_else(
    street, tmp_path, kind, capsys
) -> None:
    model_path = model(tmp_path, 0)
    out = tmp_path if kind == "dataset" else tmp_path / "other"
    if kind == "training run":
        out.mkdir()
        write_text(out / "config.yaml", "train: {}\n")
        save_model(create_model("small_gem", image_size=(32, 24)), out / "model.safetensors")
    elif kind == "foreign files":  # map-like names beside a file that is not a map's
        out.mkdir()
        write_text(out / "descriptors.npy", "mine")
        write_text(out / "notes.txt", "mine")
    before = checksums(out)
    assert main(cli_build(model_path, tmp_path, out)) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--out" in err and "nothing was written" in err
    assert checksums(out) == before
    assert hidden_siblings(out) == []


def test_zero_byte_descriptors_name_the_file_and_the_fix(old_map, capsys) -> None:
    (old_map / DESCRIPTORS_FILE).write_bytes(b"")
    before = checksums(old_map)
    with pytest.raises(MapError, match=rf"{DESCRIPTORS_FILE}: 0 bytes.*softloc map build"):
        Map.load(old_map)
    assert main(["-q", "localize", "--map", str(old_map), str(old_map / "x.png")]) == 2
    assert "descriptors.npy: 0 bytes" in capsys.readouterr().err
    assert checksums(old_map) == before


@pytest.mark.parametrize("name", [INDEX_FILE, "model.safetensors", "model.json", "places.csv"])
def test_a_file_damaged_in_place_is_refused(old_map, name) -> None:
    path = old_map / name
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] = (data[middle] + 1) % 256  # same size, other content
    path.write_bytes(bytes(data))
    with pytest.raises(MapError, match=rf"{name}: checksum mismatch.*softloc map build"):
        Map.load(old_map)


def test_descriptors_are_checksummed_on_verify_only(old_map) -> None:
    path = old_map / DESCRIPTORS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    Map.load(old_map)  # size and shape still fit: not read at load (it may be huge)
    with pytest.raises(MapError, match=rf"{DESCRIPTORS_FILE}: checksum mismatch"):
        Map.load(old_map, verify=True)


def test_an_older_manifest_without_checksums_is_refused(old_map) -> None:
    manifest = json.loads((old_map / MANIFEST_FILE).read_text())
    (old_map / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(MapError, match="format version 1.*checksums.*softloc map build"):
        Map.load(old_map)


def test_relative_data_stores_an_absolute_image_root(street, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(cli_build(model(tmp_path, 0), Path("."), Path("rel_map"))) == 0
    monkeypatch.chdir(tmp_path.parent)
    loaded = Map.load(tmp_path / "rel_map")
    assert loaded.places.root.is_absolute() and loaded.places.root == tmp_path
    assert loaded.places.image_path(0).is_file()


def test_stale_temporaries_of_killed_writers_are_removed(old_map) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_prefix = temporary_prefix(old_map / MANIFEST_FILE)  # this (live) process
    dead_prefix = live_prefix.replace(f".p{os.getpid()}-", f".p{dead.pid}-")
    stale = old_map / f"{dead_prefix}abc123.tmp"
    live = old_map / f"{live_prefix}def456.tmp"
    legacy_old = old_map / ".manifest.json.oldname.tmp"
    legacy_new = old_map / ".manifest.json.newname.tmp"
    for path in (stale, live, legacy_old, legacy_new):
        path.write_text("half")
    os.utime(legacy_old, (1e9, 1e9))  # 2001: far older than a day
    staging = old_map.parent / (
        temporary_prefix(old_map).replace(f".p{os.getpid()}-", f".p{dead.pid}-") + "x.build"
    )
    staging.mkdir()
    Map.load(old_map)
    assert not stale.exists() and not legacy_old.exists() and not staging.exists()
    assert live.exists() and legacy_new.exists()  # a live writer is never disturbed
    # a process's first atomic write into a folder sweeps it the same way
    stale.write_text("half")
    other = old_map / (temporary_prefix(old_map / "places.csv")
                       .replace(f".p{os.getpid()}-", f".p{dead.pid}-") + "abc.tmp")
    other.write_text("half")
    _sweep_once.cache_clear()  # as in a new process
    write_text(old_map / MANIFEST_FILE, (old_map / MANIFEST_FILE).read_text())
    assert not stale.exists() and not other.exists()
    assert live.exists() and legacy_new.exists()
    stale.write_text("half")  # later writes of this process do not list the folder again
    write_text(old_map / MANIFEST_FILE, (old_map / MANIFEST_FILE).read_text())
    assert stale.exists()


def test_ivf_options_on_the_command_line(street, tmp_path, capsys) -> None:
    assert main(cli_build(model(tmp_path, 0), tmp_path, tmp_path / "pq", "--index",
                          "ivfpq")) == 2
    err = capsys.readouterr().err
    assert "--nlist" in err and "--nbits" in err and "--index flat" in err
    assert not (tmp_path / "pq").exists()
    assert main(cli_build(model(tmp_path, 0), tmp_path, tmp_path / "ivf", "--index", "ivf",
                          "--nlist", "2", "--nprobe", "2")) == 0
    index = json.loads((tmp_path / "ivf" / MANIFEST_FILE).read_text())["index"]
    assert (index["kind"], index["nlist"], index["nprobe"]) == ("ivf", 2, 2)


def test_localize_reports_bad_images_and_goes_on(street, tmp_path, old_map, monkeypatch,
                                                 capsys) -> None:
    from PIL import Image

    good = street.image_path(int(np.flatnonzero(street.split == "test")[0]))
    empty_folder = tmp_path / "empty_folder"
    empty_folder.mkdir()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(huge)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x limit: a "bomb"
    images = [good, empty_folder, tmp_path / "missing.png", corrupt, huge, good]
    before = checksums(old_map)
    assert main(["-q", "localize", "--map", str(old_map), *map(str, images)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count(f"{good}: x=") == 2  # both good images, despite the bad ones
    err = captured.err
    assert f"{empty_folder}: is a folder holding no images" in err
    assert f"{tmp_path / 'missing.png'}: image not found" in err
    assert f"{corrupt}: cannot decode image" in err
    assert f"{huge}: image too large" in err and "shrink the file" in err
    assert "4 of 6 image(s) could not be localized" in err
    assert checksums(old_map) == before


def test_localize_a_folder_takes_the_images_in_it(street, old_map, capsys) -> None:
    folder = street.image_path(0).parent
    assert main(["-q", "localize", "--map", str(old_map), str(folder)]) == 0
    assert capsys.readouterr().out.count(": x=") == len(list(folder.glob("*.png")))
