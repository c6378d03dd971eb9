"""``softloc prepare``: canonical layout, report, resume after a kill, errors that name files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softloc.cli import main
from softloc.data.places import read_places
from softloc.data.readers.report import DatasetError
from softloc.prepare import PrepareError, prepare, resized_size

_MAKERS = Path(__file__).parent / "data" / "readers" / "conftest.py"
_spec = importlib.util.spec_from_file_location("reader_fixture_makers", _MAKERS)
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

REF, NIGHT = "2014-12-02-15-30-08", "2014-12-17-18-18-43"


@pytest.fixture
def robotcar(tmp_path):
    root = tmp_path / "robotcar"
    fx.straight_drive(root, REF, n=8, colour=(200, 100, 50))
    fx.straight_drive(root, NIGHT, n=5, colour=(20, 40, 60))
    return root


def test_robotcar_to_canonical_layout(robotcar, tmp_path):
    out = tmp_path / "out"
    # 16x12 Bayer frames, long side cached at 8 -> 8x6 RGB
    (robotcar / NIGHT / "stereo" / "centre" / "1418132417247115.png").unlink()  # frame 2
    code = main(["-q", "prepare", "robotcar", str(robotcar), "--out", str(out),
                 "--config", "robotcar_paper", "--max-side", "8"])
    assert code == 0
    table = read_places(out, check_images=True)
    assert len(table) == 12
    assert table.traversals() == ["reference", "night"]
    night = table.where(traversal="night")
    image = np.asarray(Image.open(table.image_path(len(table) - 1)))
    assert image.shape == (6, 8, 3)
    # the night drive is the Bayer mosaic of RGB (20, 40, 60); the interior keeps that colour
    assert np.abs(image[2:4, 2:6].reshape(-1, 3).astype(int) - [20, 40, 60]).max() <= 1
    # cached images are named from the row: 8 reference rows come first, then the night drive
    assert night.path[0] == "images/night/000008_1418132416747115.png"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_split_condition"] == {"test": {"night": 4, "overcast": 8}}
    assert summary["by_traversal"] == {"night": 4, "reference": 8}
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"missing_image": 1}
    assert "1418132417247115.png" in report["problems"][0]["file"]
    assert "missing_image | 1 |" in (out / "report.md").read_text()
    assert (out / "drives.png").stat().st_size > 1000
    assert "| test | 4 | 8 | 12 |" in (out / "summary.md").read_text()


def test_regions_and_reference_spacing(robotcar, tmp_path):
    # the drives move 1.25 m per frame along both axes from the INS sample point; frames 0..3
    # of each drive fall in the train polygon, 4..7 in the test polygon
    e0, n0 = fx.SAMPLE_EASTING, fx.SAMPLE_NORTHING
    regions = tmp_path / "regions.csv"
    rows = ["split,polygon,x,y"]
    for split, lo, hi in (("train", -1.0, 4.5), ("test", 4.6, 20.0)):
        rows += [f"{split},{split},{e0 + a},{n0 + b}" for a, b in
                 ((lo, lo), (hi, lo), (hi, hi), (lo, hi))]
    regions.write_text("\n".join(rows) + "\n")
    result = prepare("robotcar", robotcar, tmp_path / "out", max_side=8, progress=False,
                     config="robotcar_paper", regions=regions, reference_spacing=2.5)
    table = result.table
    ref = table.where(traversal="reference")
    # reference frames 1.77 m apart along the path: kept every second frame
    assert len(ref) == 4
    assert np.diff(ref.timestamp) == pytest.approx(np.full(3, 0.5))
    assert sorted(set(table.split)) == ["test", "train"]
    assert list(table.where(traversal="night").split) == ["train"] * 4 + ["test"]


def test_killed_run_resumes_without_rewriting(robotcar, tmp_path, monkeypatch):
    import softloc.prepare as module

    out = tmp_path / "out"
    calls = {"n": 0}
    original = module._cache_image

    def dying(loader, source, target, max_side):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the process is killed while decoding image 4
        original(loader, source, target, max_side)

    monkeypatch.setattr(module, "_cache_image", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare("robotcar", robotcar, out, max_side=8, progress=False)
    assert not (out / "places.csv").exists()
    cached = sorted((out / "images").rglob("*.png"))
    assert len(cached) == 3
    assert not list(out.rglob("*.tmp"))
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    monkeypatch.setattr(module, "_cache_image", original)
    result = prepare("robotcar", robotcar, out, max_side=8, progress=False)
    assert (result.reused, result.written) == (3, 10)
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps
    assert len(read_places(out, check_images=True)) == 13
    with pytest.raises(PrepareError, match="prepared with other settings"):
        prepare("robotcar", robotcar, out, max_side=16, progress=False)


def test_unreadable_and_missing_images_counted_then_nothing_left_is_an_error(tmp_path):
    root = tmp_path / "pitts"
    db = ["000/000001_pitch1_yaw1.jpg", "000/000002_pitch1_yaw2.jpg", "000/000003_pitch1_yaw3.jpg"]
    q = ["000/000009_pitch1_yaw1.jpg"]
    mat = fx.write_dbstruct(root / "datasets" / "pitts30k_test.mat", db,
                            [[584500.0, 584510.0, 584520.0], [4477000.0] * 3], q,
                            [[584505.0], [4477000.0]])
    fx.write_jpegs(root, db[:2] + [f"queries_real/{q[0]}"], size=(64, 48))
    (root / db[1]).write_bytes(b"\xff\xd8 not really a jpeg")
    result = prepare("pittsburgh", mat, tmp_path / "out", max_side=24, progress=False)
    assert {p.kind: p.rows for p in result.problems} == {"missing_image": 1,
                                                         "unreadable_image": 1}
    assert Image.open(result.table.image_path(0)).size == (24, 18)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "000003_pitch1_yaw3.jpg" in report and "000002_pitch1_yaw2.jpg" in report
    # nothing readable: the run stops, names the source and the fix, and leaves the report
    for name in db[:1] + [f"queries_real/{q[0]}"]:
        (root / name).unlink()
    with pytest.raises(PrepareError, match="none of the 4 listed images could be read"):
        prepare("pittsburgh", mat, tmp_path / "out2", max_side=24, progress=False)
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["counts"] == {
        "missing_image": 3, "unreadable_image": 1}
    assert not (tmp_path / "out2" / "places.csv").exists()


def test_cli_errors_exit_2_with_the_file(tmp_path, capsys):
    code = main(["-q", "prepare", "pittsburgh", str(tmp_path / "nope.mat"), "--out",
                 str(tmp_path / "o")])
    assert code == 2
    assert "nope.mat: no such file" in capsys.readouterr().err
    code = main(["-q", "prepare", "csv", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o2"),
                 "--pitch1-only"])
    assert code == 2
    assert "do not apply to format 'csv'" in capsys.readouterr().err


def test_resized_size_keeps_aspect():
    assert resized_size(1280, 960, 240) == (240, 180)  # the authors' RobotCar cache
    assert resized_size(640, 480, 240) == (240, 180)
    assert resized_size(100, 50, 240) == (100, 50)  # never enlarged


def test_failed_run_can_be_corrected_in_the_same_folder(robotcar, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="no drive folders"):
        prepare("robotcar", robotcar / REF / "stereo", out, max_side=8, progress=False)
    result = prepare("robotcar", robotcar, out, max_side=8, progress=False)
    assert len(result.table) == 13


def test_prepare_also_writes_the_vg_layout(tmp_path):
    from softloc.data.readers.vg_benchmark import read_vg_benchmark

    root = tmp_path / "pitts"
    db = ["000/000001_pitch1_yaw1.jpg", "000/000002_pitch1_yaw4.jpg"]
    q = ["000/000009_pitch1_yaw1.jpg"]
    mat = fx.write_dbstruct(root / "datasets" / "pitts30k_test.mat", db,
                            [[584468.67, 584510.0], [4477301.78, 4477000.0]], q,
                            [[584505.0], [4477000.0]])
    fx.write_jpegs(root, db + [f"queries_real/{q[0]}"], size=(64, 48))
    code = main(["-q", "prepare", "pittsburgh", str(mat), "--out", str(tmp_path / "out"),
                 "--max-side", "24", "--vg-out", str(tmp_path / "vg")])
    assert code == 0
    vg = read_vg_benchmark(tmp_path / "vg")
    assert vg.zone == (17, "T")
    names = sorted(p.name for p in (tmp_path / "vg" / "images" / "test" / "database").iterdir())
    # the published datasets_vg name of this point starts @0584468.67@4477301.78@17@T@040.4420
    assert names[0].startswith("@0584468.67@4477301.78@17@T@040.4420")
    prepared = read_places(tmp_path / "out")
    assert sorted(vg.table.x) == pytest.approx(sorted(prepared.x), abs=0.005)
    assert sorted(vg.table.traversal) == ["query", "reference", "reference"]
    assert Image.open(tmp_path / "vg" / "images" / "test" / "database" / names[0]).size == (24, 18)


def test_parallel_workers_give_the_same_output_and_problems(robotcar, tmp_path):
    centre = robotcar / NIGHT / "stereo" / "centre"
    (centre / "1418132417247115.png").unlink()  # a missing frame
    frames = sorted(centre.glob("*.png"))
    frames[0].write_bytes(b"not a png")  # an unreadable frame
    results = {
        n: prepare("robotcar", robotcar, tmp_path / f"out{n}", max_side=8, progress=False,
                   workers=n)
        for n in (1, 3)
    }
    one, three = results[1], results[3]
    assert [(p.kind, p.file) for p in three.problems] == [(p.kind, p.file) for p in one.problems]
    assert sorted(p.kind for p in one.problems) == ["missing_image", "unreadable_image"]
    assert (three.written, three.reused) == (one.written, one.reused) == (11, 0)
    assert list(three.table.path) == list(one.table.path)
    for path in one.table.path:
        assert (tmp_path / "out3" / path).read_bytes() == (tmp_path / "out1" / path).read_bytes()
    with pytest.raises(PrepareError, match="workers must be >= 1"):
        prepare("robotcar", robotcar, tmp_path / "out0", max_side=8, progress=False, workers=0)
