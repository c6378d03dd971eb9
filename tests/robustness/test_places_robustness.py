"""CSV text as people and spreadsheets write it: encodings, BOMs, separators, timestamps, repeats.

Each bad input either is read right (checked against an independent value) or meets an error
(exit 2) that names the file and the fix, and leaves the files that existed unchanged.
"""

from __future__ import annotations

import calendar
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softloc.cli import main
from softloc.data.places import COLUMNS, PlacesError, read_places
from softloc.data.readers.plain_csv import read_plain_csv
from softloc.data.readers.report import DatasetError
from softloc.data.timestamps import parse_timestamp

T0 = calendar.timegm((2020, 5, 1, 10, 0, 0))  # 2020-05-01T10:00:00Z, by the standard library


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def images(folder: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((6, 8, 3), 20 * i, dtype=np.uint8)).save(path)
        names.append(path.name)
    return names


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["-q", *args])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# BAD 8: timestamps


def test_iso_timestamps_are_read_not_zeroed(tmp_path, capsys):
    # the case: 12 rows one second apart, ISO-8601 without a zone
    names = images(tmp_path, 12)
    rows = [f"{n},{i},0,2020-05-01T10:00:{i + 1:02d}" for i, n in enumerate(names)]
    (tmp_path / "d.csv").write_text("path,x,y,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert run(capsys, "prepare", "csv", str(tmp_path / "d.csv"), "--out", str(out))[0] == 0
    table = read_places(out)
    assert len(table) == 12
    np.testing.assert_array_equal(table.timestamp, T0 + 1.0 + np.arange(12))
    assert json.loads((out / "report.json").read_text())["counts"] == {}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2020-05-01T10:00:01", T0 + 1),
        ("2020-05-01 10:00:01", T0 + 1),
        ("2020-05-01T10:00:01Z", T0 + 1),
        ("2020-05-01T10:00:01.250", T0 + 1.25),
        ("2020-05-01T12:00:01+02:00", T0 + 1),
        ("2020-05-01T05:30:01-0430", T0 + 1),
        ("2020-05-01T10:00", T0),
        ("2020-05-01", T0 - 10 * 3600),
        ("20200501T100001", T0 + 1),
        (str(T0 + 1), T0 + 1),  # epoch seconds
        (f"{(T0 + 1) * 1000 + 250}", T0 + 1.25),  # epoch milliseconds (>= 1e11)
        (f"{(T0 + 1) * 1_000_000}", T0 + 1),  # epoch microseconds (>= 1e14), RobotCar's unit
        ("12.5", 12.5),  # seconds from the start of a drive
    ],
)
def test_timestamp_forms(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize("text", ["", "  ", "nan", "inf", "yesterday", "2020-13-01T00:00:00",
                                  "2020-05-01T25:00:00", "1e20"])
def test_unparseable_timestamps_raise(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_bad_timestamp_and_bad_yaw_are_dropped_rows(tmp_path, capsys):
    names = images(tmp_path, 5)
    (tmp_path / "d.csv").write_text(
        "path,x,y,yaw,timestamp\n"
        f"{names[0]},0,0,0.5,2020-05-01T10:00:00\n"
        f"{names[1]},1,0,0.5,soon\n"
        f"{names[2]},2,0,north,2020-05-01T10:00:02\n"
        f"{names[3]},3,0,,2020-05-01T10:00:03\n"
        f"{names[4]},4,0,0.5,2020-05-01T10:00:04\n")
    out = tmp_path / "out"
    assert run(capsys, "prepare", "csv", str(tmp_path / "d.csv"), "--out", str(out))[0] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"bad_timestamp": 1, "bad_yaw": 2}
    details = {p["kind"]: p["detail"] for p in report["problems"]}
    assert "line 3" in details["bad_timestamp"] and "'soon'" in details["bad_timestamp"]
    assert "bad_timestamp" in (out / "report.md").read_text()
    table = read_places(out)
    np.testing.assert_array_equal(table.timestamp, [T0, T0 + 4])


def test_canonical_places_reads_iso_timestamps_and_refuses_bad_ones(tmp_path):
    header = ",".join(COLUMNS)
    (tmp_path / "places.csv").write_text(
        f"{header}\na.png,0,0,0,2020-05-01T10:00:01Z,ref,c,test\n")
    assert read_places(tmp_path).timestamp.tolist() == [T0 + 1]
    (tmp_path / "places.csv").write_text(
        f"{header}\na.png,0,0,0,{(T0 + 1) * 1000},ref,c,test\nb.png,0,0,0,3.5,ref,c,test\n")
    assert read_places(tmp_path).timestamp.tolist() == [T0 + 1, 3.5]  # ms, then seconds
    (tmp_path / "places.csv").write_text(f"{header}\na.png,0,0,0,later,ref,c,test\n")
    with pytest.raises(PlacesError, match=r"places.csv, line 2: column 'timestamp'.*ISO-8601"):
        read_places(tmp_path)


# ---------------------------------------------------------------------------------------------
# encodings, byte-order marks, separators, spaces


def _drive_text(names: list[str]) -> str:
    return "path,x,y,condition\n" + "".join(f"{n},{i},0,café\n" for i, n in enumerate(names))


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_bom_marked_files_are_read(tmp_path, encoding):
    names = images(tmp_path, 2)
    (tmp_path / "d.csv").write_bytes(_drive_text(names).encode(encoding))
    table = read_plain_csv(tmp_path / "d.csv").table
    assert list(table.path) == names and list(table.condition) == ["café", "café"]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("latin-1", "byte 0xe9 is not UTF-8"),
        ("utf-16-le", "NUL bytes"),  # UTF-16 without its byte-order mark
    ],
)
def test_other_encodings_name_the_file_line_and_fix(tmp_path, capsys, data, why):
    names = images(tmp_path, 2)
    (tmp_path / "d.csv").write_bytes(_drive_text(names).encode(data))
    before = checksums(tmp_path)
    code, err = run(capsys, "prepare", "csv", str(tmp_path / "d.csv"), "--out",
                    str(tmp_path / "out"))
    assert code == 2
    assert f"{tmp_path / 'd.csv'}, line" in err and why in err and "save it as UTF-8" in err
    assert checksums(tmp_path) == before


def test_places_csv_with_bom_and_spaces_after_commas(tmp_path):
    text = (", ".join(COLUMNS) + "\n" + "a.png, 1.5, 2.5, 0.25, 7, ref, night, Test\n")
    (tmp_path / "places.csv").write_bytes(text.encode("utf-8-sig"))
    table = read_places(tmp_path)
    assert (table.path[0], table.x[0], table.y[0], table.yaw[0]) == ("a.png", 1.5, 2.5, 0.25)
    assert (table.traversal[0], table.condition[0], table.split[0]) == ("ref", "night", "test")


def test_missing_columns_show_the_header_read_and_semicolons_get_a_hint(tmp_path):
    (tmp_path / "places.csv").write_text(";".join(COLUMNS) + "\n" + "a.png;1;2;0;0;r;c;test\n")
    with pytest.raises(PlacesError) as error:
        read_places(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "places.csv") in message and "path;x;y" in message
    assert "separated by semicolons" in message and "commas" in message
    (tmp_path / "d.csv").write_text("path;x;y\na.png;1,5;2\n")
    with pytest.raises(DatasetError, match=r"d.csv: header \['path;x;y'\].*semicolons"):
        read_plain_csv(tmp_path / "d.csv")


def test_places_csv_latin1_names_the_file(tmp_path):
    text = ",".join(COLUMNS) + "\n" + "a.png,1,2,0,0,ref,café,test\n"
    (tmp_path / "places.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(PlacesError, match=r"places.csv, line 2: byte 0xe9.*save it as UTF-8"):
        read_places(tmp_path)


def test_a_path_of_spaces_is_a_dropped_row(tmp_path, capsys):
    names = images(tmp_path, 2)
    (tmp_path / "d.csv").write_text(f"path,x,y\n{names[0]},0,0\n   ,1,0\n{names[1]},2,0\n")
    out = tmp_path / "out"
    assert run(capsys, "prepare", "csv", str(tmp_path / "d.csv"), "--out", str(out))[0] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"bad_row": 1}
    assert report["problems"][0]["detail"] == "line 3: empty path"
    assert len(read_places(out, check_images=True)) == 2


# ---------------------------------------------------------------------------------------------
# repeated images


def test_same_image_far_apart_drops_every_row_of_it(tmp_path):
    names = images(tmp_path, 3)
    (tmp_path / "d.csv").write_text(
        "path,x,y\n"
        f"{names[0]},0,0\n"
        f"{names[1]},10,0\n"
        f"{names[0]},500,0\n"  # the case: the same image 500 m away
        f"{names[2]},20,0\n"
        f"./{names[2]},20.5,0\n")  # the same file again, at the same place
    result = read_plain_csv(tmp_path / "d.csv")
    assert list(result.table.path) == [names[1], names[2]]
    by_kind = {p.kind: p for p in result.problems}
    assert set(by_kind) == {"conflicting_positions", "duplicate_image"}
    assert by_kind["conflicting_positions"].rows == 2
    assert "lines 2, 4" in by_kind["conflicting_positions"].detail
    assert "500.0 m apart" in by_kind["conflicting_positions"].detail
    assert by_kind["duplicate_image"].rows == 1
    assert "lines 5, 6" in by_kind["duplicate_image"].detail


# ---------------------------------------------------------------------------------------------
# split labels


def test_split_labels_differing_in_case_are_one_split(tmp_path):
    names = images(tmp_path, 3)
    (tmp_path / "d.csv").write_text(
        f"path,x,y,split\n{names[0]},0,0,Train\n{names[1]},1,0,train\n{names[2]},2,0, TEST\n")
    assert list(read_plain_csv(tmp_path / "d.csv").table.split) == ["train", "train", "test"]
    header = ",".join(COLUMNS)
    (tmp_path / "places.csv").write_text(f"{header}\na.png,0,0,0,0,r,c,Train\n"
                                         "b.png,1,0,0,1,r,c,train\n")
    assert list(read_places(tmp_path).split) == ["train", "train"]


# ---------------------------------------------------------------------------------------------
# MSLS raw.csv: compass angle and capture time read by the same rules


def test_msls_bad_angle_and_time_are_dropped_rows_and_ms_epochs_read(tmp_path):
    from softloc.data.readers.msls import read_msls

    folder = tmp_path / "train_val" / "cph" / "database"
    (folder / "images").mkdir(parents=True)
    rows = [("a", "90", f"{(T0 + 1) * 1000}"), ("b", "", "2020-05-01"), ("c", "0", "soon"),
            ("d", "180", "2020-05-01T10:00:00Z")]
    post = [",key,easting,northing,unique_cluster,control_panel,night,view_direction"]
    raw = [",key,lon,lat,ca,captured_at,pano"]
    for i, (key, ca, when) in enumerate(rows):
        post.append(f"{i},{key},{100.0 + i},200.0,{i},0,False,Forward")
        raw.append(f"{i},{key},12.5,55.6,{ca},{when},False")
        Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(folder / "images" / f"{key}.jpg")
    (folder / "postprocessed.csv").write_text("\n".join(post) + "\n")
    (folder / "raw.csv").write_text("\n".join(raw) + "\n")
    result = read_msls(tmp_path)
    assert [p.split("/")[-1] for p in result.table.path] == ["a.jpg", "d.jpg"]
    assert result.table.timestamp.tolist() == [T0 + 1, T0]
    # (the city has no query/ folder: that is missing_metadata)
    assert result.counts() == {"bad_timestamp": 1, "bad_yaw": 1, "missing_metadata": 1}
    details = " ".join(p.detail for p in result.problems)
    assert "key b" in details and "key c" in details and "'soon'" in details
