"""``softloc prepare`` and ``softloc town`` meet a user's mistakes and faults without losing files.

Every case runs the command line, asserts the exit code, that the message names the file and
the fix, and that the files that existed before are unchanged (checksums). Fixtures are tiny
drives in the real formats: a user's CSV with PNG/JPEG images, a NetVLAD dbStruct .mat.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softloc.cli import main
from softloc.data.places import PlaceTable, read_places, write_places

PITTS_MAT = Path(__file__).resolve().parents[1] / "fixtures" / "pitts30k_test" / "pitts30k_test.mat"
SRC = Path(__file__).resolve().parents[2] / "src"


def checksums(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) and its SHA-256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def colour_image(path: Path, colour: tuple[int, int, int], size=(16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(path)
    return path


def drive_csv(folder: Path, n: int = 6, name: str = "drive.csv") -> Path:
    """``folder/name`` listing ``n`` PNG images 2 m apart, each of its own colour."""
    lines = ["path,x,y,yaw,timestamp"]
    for i in range(n):
        colour_image(folder / "img" / f"{i}.png", (40 * i, 100, 200 - 30 * i))
        lines.append(f"img/{i}.png,{2.0 * i},0.0,0.0,{10.0 + i}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["-q", *args])
    return code, capsys.readouterr().err


def prepared_files(out: Path) -> dict[str, str]:
    """The files whose bytes must not depend on how the run went (interrupts, workers)."""
    sums = checksums(out)
    keep = {"places.csv", "report.json"}
    return {k: v for k, v in sums.items() if k in keep or k.startswith("images/")}


# ---------------------------------------------------------------------------------------------
# BAD 4 and 5: --out at the source, or over a dataset prepare did not write


def test_out_at_the_source_folder_is_refused_untouched(tmp_path, capsys):
    # the case: a source CSV named places.csv, --out its own folder
    source = tmp_path / "mine"
    csv_path = drive_csv(source, name="places.csv")
    before = checksums(source)
    code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(source))
    assert code == 2
    assert str(source) in err and "Choose a new folder" in err and "-prepared" in err
    assert checksums(source) == before
    # a folder that holds the source (its parent) is refused the same way
    code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(tmp_path))
    assert code == 2 and "holds it" in err
    assert checksums(source) == before
    # a new folder beside it, or inside it, is fine: nothing of the source is replaced
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(source / "prep"))[0] == 0
    assert {k: v for k, v in checksums(source).items() if not k.startswith("prep/")} == before
    table = read_places(source / "prep", check_images=True)
    assert len(table) == 6 and all(p.startswith("images/") for p in table.path)


def _hand_made_dataset(folder: Path, town: bool) -> None:
    image = colour_image(folder / "images" / "0.png", (1, 2, 3))
    table = PlaceTable(path=np.array([image.relative_to(folder).as_posix()]), x=np.zeros(1),
                       y=np.zeros(1), yaw=np.zeros(1), timestamp=np.zeros(1),
                       traversal=np.array(["reference"]), condition=np.array(["c"]),
                       split=np.array(["test"]), root=folder)
    write_places(table, folder / "places.csv")
    if town:
        (folder / "town.json").write_text('{"seed": 0}\n')


@pytest.mark.parametrize("town", [True, False], ids=["town", "hand-made"])
def test_prepare_over_a_dataset_it_did_not_write_is_refused(tmp_path, capsys, town):
    csv_path = drive_csv(tmp_path / "src")
    out = tmp_path / "dataset"
    _hand_made_dataset(out, town)
    before = checksums(out)
    code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))
    assert code == 2
    assert str(out) in err and "prepare.json" in err and "new or empty folder" in err
    assert ("a town" in err) == town
    assert checksums(out) == before


def test_prepare_over_foreign_files_or_a_file_is_refused(tmp_path, capsys):
    csv_path = drive_csv(tmp_path / "src")
    out = tmp_path / "holiday"
    colour_image(out / "beach.jpg", (9, 9, 9))
    before = checksums(out)
    code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))
    assert code == 2 and "files softloc did not write" in err and "beach.jpg" in err
    assert checksums(out) == before
    code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(out / "beach.jpg"))
    assert code == 2 and "is a file" in err
    assert checksums(out) == before


def test_town_over_a_prepared_dataset_or_foreign_files_is_refused(tmp_path, capsys):
    out = tmp_path / "prepared"
    csv_path = drive_csv(tmp_path / "src")
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))[0] == 0
    before = checksums(out)
    code, err = run(capsys, "town", "--out", str(out))
    assert code == 2 and str(out) in err and "not a town" in err and "empty folder" in err
    assert checksums(out) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    code, err = run(capsys, "town", "--out", str(notes))
    assert code == 2 and "todo.txt" in err and "--out" in err
    assert (notes / "todo.txt").read_text() == "mine"


def test_vg_out_over_out_or_the_source_is_refused(tmp_path, capsys):
    csv_path = drive_csv(tmp_path / "src")
    before = checksums(tmp_path)
    for vg_out in (tmp_path / "out", tmp_path / "out" / "vg", tmp_path / "src"):
        code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(tmp_path / "out"),
                        "--vg-out", str(vg_out))
        assert code == 2 and "--vg-out" in err and str(vg_out) in err
    assert checksums(tmp_path) == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# BAD 9: a full disk stops the run (exit 2) and keeps what was written


def test_full_disk_stops_the_run_and_a_rerun_resumes_to_the_same_output(
    tmp_path, capsys, monkeypatch
):
    csv_path = drive_csv(tmp_path / "src", n=8)
    source_before = checksums(tmp_path / "src")
    out = tmp_path / "out"
    real_save = Image.Image.save
    saved = {"png": 0}
    lock = threading.Lock()

    def disk_fills_after_two(self, fp, format=None, **params):
        if format == "PNG":
            with lock:
                saved["png"] += 1
                full = saved["png"] > 2
            if full:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", disk_fills_after_two)
    code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(out), "--workers", "2")
    assert code == 2
    assert "No space left on device" in err and str(out) in err
    assert "run the same command again" in err and "unreadable_image" not in err
    assert not (out / "places.csv").exists()  # the run does not look complete
    assert len(list((out / "images").rglob("*.png"))) == 2  # what was written is kept
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    # both images written before the failure are reused, whichever worker finished them
    assert (summary["reused"], summary["written"]) == (2, 6)
    assert json.loads((out / "report.json").read_text())["counts"] == {}
    fresh = tmp_path / "fresh"
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(fresh))[0] == 0
    assert prepared_files(out) == prepared_files(fresh)
    assert checksums(tmp_path / "src") == source_before


def test_full_disk_while_writing_places_csv_is_exit_2(tmp_path, capsys, monkeypatch):
    import softloc.prepare as module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.tmp"))

    monkeypatch.setattr(module, "write_places", full)
    code, err = run(capsys, "prepare", "csv", str(drive_csv(tmp_path / "src")), "--out",
                    str(tmp_path / "out"))
    assert code == 2 and "No space left on device" in err and "places.csv" in err
    assert not (tmp_path / "out" / "places.csv").exists()


# ---------------------------------------------------------------------------------------------
# BAD 10: absolute and ../ paths never make the cache write outside --out


def test_cached_images_stay_under_out_whatever_the_paths(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    colour_image(elsewhere / "far.png", (0, 255, 0))
    colour_image(tmp_path / "up.png", (255, 255, 0))
    drive = tmp_path / "drive"
    colour_image(drive / "a.jpg", (255, 0, 0))  # a.jpg and a.png: two images, one stem
    colour_image(drive / "a.png", (0, 0, 255))
    (drive / "d.csv").write_text(
        "path,x,y\n"
        f"{elsewhere / 'far.png'},0,0\n"
        "../up.png,5,0\n"
        "a.jpg,10,0\n"
        "a.png,15,0\n", encoding="utf-8")
    before = checksums(tmp_path)
    out = tmp_path / "out"
    assert run(capsys, "prepare", "csv", str(drive / "d.csv"), "--out", str(out))[0] == 0
    after = checksums(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == before
    table = read_places(out, check_images=True)
    assert len(table) == 4
    for i, expected in enumerate([(0, 255, 0), (255, 255, 0), (255, 0, 0), (0, 0, 255)]):
        assert table.image_path(i).resolve().is_relative_to(out.resolve())
        pixel = np.asarray(Image.open(table.image_path(i)))[3, 3].astype(int)
        assert np.abs(pixel - expected).max() <= 3, (table.path[i], pixel)
    assert len(set(table.path)) == 4


def test_a_listed_image_inside_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    csv_path = drive_csv(tmp_path / "src")
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))[0] == 0
    cached = read_places(out).path[0]
    # the same CSV (same settings, so a resume) edited to list one of the cached images
    csv_path.write_text(f"path,x,y\n{out / cached},0,0\n")
    before = checksums(out)
    code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))
    assert code == 2 and "inside --out" in err and cached.split("/")[-1] in err
    assert checksums(out) == before


# ---------------------------------------------------------------------------------------------
# BAD 12: an image over the decompression-bomb limit is a dropped row


def test_decompression_bomb_is_a_dropped_row(tmp_path, capsys, monkeypatch):
    csv_path = drive_csv(tmp_path / "src", n=4)  # 16 x 12 = 192 pixels each
    colour_image(tmp_path / "src" / "img" / "2.png", (1, 1, 1), size=(64, 48))  # 3,072 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this
    out = tmp_path / "out"
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))[0] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"image_too_large": 1}
    problem = report["problems"][0]
    assert problem["file"].endswith("img/2.png") and "Shrink the image" in problem["detail"]
    assert len(read_places(out, check_images=True)) == 3


# ---------------------------------------------------------------------------------------------
# stale cache: a replaced source image is cached again


def test_replaced_source_image_is_cached_again(tmp_path, capsys):
    csv_path = drive_csv(tmp_path / "src", n=4)
    out = tmp_path / "out"
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))[0] == 0
    replaced = tmp_path / "src" / "img" / "1.png"
    colour_image(replaced, (250, 250, 250))
    stat = replaced.stat()
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["reused"], summary["written"]) == (3, 1)
    table = read_places(out)
    assert np.asarray(Image.open(table.image_path(1)))[0, 0].tolist() == [250, 250, 250]


# ---------------------------------------------------------------------------------------------
# keep what is good: kill -9 mid-run, then the same command resumes to the same bytes


def test_kill_9_mid_run_resumes_to_identical_output(tmp_path, capsys):
    csv_path = drive_csv(tmp_path / "src", n=8)
    out = tmp_path / "out"
    # a subprocess that SIGKILLs itself while caching the fourth image
    script = (
        "import os, signal, sys\n"
        "import softloc.prepare as m\n"
        "real, calls = m._cache_image, [0]\n"
        "def dying(*a):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(*a)\n"
        "m._cache_image = dying\n"
        "from softloc.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", script, "-q", "prepare", "csv", str(csv_path),
                           "--out", str(out), "--workers", "1"], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert not (out / "places.csv").exists()
    assert len(list((out / "images").rglob("*.png"))) == 3
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(out))[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["reused"], summary["written"]) == (3, 5)
    fresh = tmp_path / "fresh"
    assert run(capsys, "prepare", "csv", str(csv_path), "--out", str(fresh))[0] == 0
    assert prepared_files(out) == prepared_files(fresh)
    assert not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# BAD 13: a zero-byte or truncated Pittsburgh .mat


@pytest.mark.parametrize("size", [0, 128, 5000], ids=["empty", "header-only", "truncated"])
def test_broken_pittsburgh_mat_names_the_file_and_the_fix(tmp_path, capsys, size):
    mat = tmp_path / "datasets" / "pitts30k_test.mat"
    mat.parent.mkdir()
    mat.write_bytes(PITTS_MAT.read_bytes()[:size])
    before = checksums(tmp_path)
    code, err = run(capsys, "prepare", "pittsburgh", str(mat), "--out", str(tmp_path / "out"))
    assert code == 2
    assert str(mat) in err and "download the NetVLAD dataset specification again" in err
    assert "Traceback" not in err
    assert checksums(tmp_path) == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# options read as numbers or labels: negative spacing, split case


def test_negative_reference_spacing_is_refused(tmp_path, capsys):
    csv_path = drive_csv(tmp_path / "src")
    code, err = run(capsys, "prepare", "csv", str(csv_path), "--out", str(tmp_path / "out"),
                    "--reference-spacing", "-5")
    assert code == 2 and "--reference-spacing must be a distance >= 0" in err and "-5" in err
    assert not (tmp_path / "out").exists()


def test_split_labels_are_case_insensitive(tmp_path, capsys):
    csv_path = drive_csv(tmp_path / "src", n=3)
    out = tmp_path / "out"
    code, _ = run(capsys, "prepare", "csv", str(csv_path), "--out", str(out), "--split", "Train")
    assert code == 0
    assert set(read_places(out).split) == {"train"}
