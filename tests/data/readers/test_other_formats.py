"""VG-benchmark names (read and write), MSLS CSVs, plain CSV drives, regions and spacing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from softloc.data.places import PlaceTable
from softloc.data.readers import read_dataset
from softloc.data.readers.msls import read_msls
from softloc.data.readers.plain_csv import read_plain_csv
from softloc.data.readers.regions import assign_regions, read_regions, subsample_along
from softloc.data.readers.report import DatasetError
from softloc.data.readers.vg_benchmark import (
    format_coord,
    parse_name,
    read_vg_benchmark,
    write_vg_benchmark,
)

PITTS_NAME = "@0584468.67@4477301.78@17@T@040.44207@-080.00399@005007@00@@@@@@pitch1_yaw1@.jpg"
MSLS_NAME = ("@0241821.78@9862147.68@37@M@-01.24616@0036.67991@Oz2hnuwJn1QUBN95Y8SGZQ@@@@@@"
             "20180527@day_forward_nairobi@.jpg")


def _jpeg(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value, dtype=np.uint8)).save(path)


def test_real_vg_names_parse():
    pitts = parse_name(PITTS_NAME)
    assert (pitts["easting"], pitts["northing"]) == (584468.67, 4477301.78)
    assert pitts["zone_number"] == 17
    assert pitts["note"] == "pitch1_yaw1" and pitts["timestamp"] is None
    msls = parse_name(MSLS_NAME)
    assert msls["easting"] == 241821.78 and msls["zone_letter"] == "M"
    assert msls["timestamp"] == 1527379200.0  # 2018-05-27 00:00 UTC
    assert format_coord(-1.24616, 3, 5) == "-01.24616"
    assert format_coord(584825.96, 7, 2) == "0584825.96"


def test_vg_layout_reads_splits_and_subsets(tmp_path):
    _jpeg(tmp_path / "images" / "test" / "database" / PITTS_NAME)
    _jpeg(tmp_path / "images" / "test" / "queries" / "sub" / MSLS_NAME)
    _jpeg(tmp_path / "images" / "train" / "database" / "not_an_at_name.jpg")
    result = read_vg_benchmark(tmp_path)
    table = result.table
    assert sorted(table.traversal) == ["query", "reference"]
    assert list(table.split) == ["test", "test"]
    ref = table.where(traversal="reference")
    assert (ref.x[0], ref.y[0], ref.split[0]) == (584468.67, 4477301.78, "test")
    assert result.counts() == {"bad_row": 1}
    with pytest.raises(DatasetError, match="no images/"):
        read_vg_benchmark(tmp_path / "images")


def test_vg_write_then_read_round_trip(tmp_path):
    for i in range(3):
        _jpeg(tmp_path / "src" / f"{i}.jpg", value=40 * i)
    table = PlaceTable(
        path=np.array(["0.jpg", "1.jpg", "2.jpg"]), x=np.array([584468.67, 584470.0, 584500.5]),
        y=np.array([4477301.78, 4477302.0, 4477310.25]), yaw=np.array([np.pi / 2, 0.0, np.pi]),
        timestamp=np.array([1527379200.0, 1527379201.0, 0.0]),
        traversal=np.array(["reference", "reference", "night"]),
        condition=np.array(["day", "day", "night"]), split=np.array(["test", "test", "val"]),
        root=tmp_path / "src",
    )
    written = write_vg_benchmark(table, tmp_path / "vg", 17, "T")
    parts = written[0].name.split("@")
    assert parts[1:5] == ["0584468.67", "4477301.78", "17", "T"]
    # the published name gives 040.44207@-080.00399 for this point, rounded from lat/lon
    assert (float(parts[5]), float(parts[6])) == pytest.approx((40.44207, -80.00399), abs=2e-5)
    assert parts[9] == "000" and parts[13] == "20180527_000000" and parts[15] == ".jpg"
    back = read_vg_benchmark(tmp_path / "vg").table
    order = np.argsort(back.x)
    assert back.x[order] == pytest.approx(table.x, abs=0.005)
    assert back.y[order] == pytest.approx(table.y, abs=0.005)
    assert back.yaw[order] == pytest.approx(table.yaw, abs=0.01)  # whole degrees
    assert list(back.traversal[order]) == ["reference", "reference", "query"]
    assert list(back.split[order]) == ["test", "test", "val"]
    assert back.timestamp[order][:2] == pytest.approx([1527379200.0, 1527379201.0])


def test_msls_reads_conditions_and_skips_panoramas(tmp_path, fx):
    fx.write_msls_subset(tmp_path, "cph", "database", [
        {"key": "a1", "e": 723000.0, "n": 6175000.0, "ca": 90.0},
        {"key": "a2", "e": 723010.0, "n": 6175000.0, "pano": True},
        {"key": "a3", "e": "", "n": 6175000.0},
    ])
    fx.write_msls_subset(tmp_path, "cph", "query", [
        {"key": "q1", "e": 723001.0, "n": 6175002.0, "night": True, "view": "Sideways"},
    ])
    fx.write_msls_subset(tmp_path, "nairobi", "database", [
        {"key": "n1", "e": 241821.78, "n": 9862147.68},
    ])
    (tmp_path / "train_val" / "nairobi" / "query").mkdir()  # no CSVs there
    result = read_msls(tmp_path)
    table = result.table
    assert list(table.path) == ["train_val/cph/database/images/a1.jpg",
                                "train_val/cph/query/images/q1.jpg",
                                "train_val/nairobi/database/images/n1.jpg"]
    assert list(table.condition) == ["day_forward", "night_sideways", "day_forward"]
    assert list(table.split) == ["val", "val", "train"]
    assert list(table.traversal) == ["reference", "query", "reference"]
    assert table.yaw[0] == pytest.approx(0.0)  # compass 90 = east
    assert result.counts() == {"missing_metadata": 1, "no_position": 1, "panorama": 1}
    assert read_msls(tmp_path, cities=["cph"]).table.split.tolist() == ["val", "val"]


def test_msls_csv_without_index_column_is_rejected(tmp_path, fx):
    folder = fx.write_msls_subset(tmp_path, "sf", "database", [{"key": "a", "e": 1.0, "n": 2.0}])
    text = (folder / "postprocessed.csv").read_text().splitlines()
    (folder / "postprocessed.csv").write_text("\n".join(line.split(",", 1)[1] for line in text))
    with pytest.raises(DatasetError, match="postprocessed.csv: header .* leading index column"):
        read_msls(tmp_path)


def test_plain_csv_latlon_heading_and_problems(tmp_path):
    (tmp_path / "drive.csv").write_text(
        "path,lat,lon,heading,timestamp,condition\n"
        "a.jpg,51.760642,-1.260381,90,10.0,night\n"
        "b.jpg,,,0,11.0,night\n"
        "c.jpg,51.760642,-1.260381,180,10.0,night\n"
        "d.jpg,51.7607,-1.2603,270,12.0,\n"
    )
    result = read_plain_csv(tmp_path / "drive.csv")
    table = result.table
    assert list(table.path) == ["a.jpg", "d.jpg"]
    assert table.x[0] == pytest.approx(620057.41, abs=0.1)  # the RobotCar INS sample point
    assert table.yaw == pytest.approx([0.0, np.pi])
    assert list(table.traversal) == ["drive", "drive"]
    assert list(table.condition) == ["night", "unlabelled"]
    assert result.counts() == {"duplicate_timestamp": 1, "no_position": 1}
    assert "line 3" in result.problems[0].detail


def test_plain_csv_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("image,east,north\na.jpg,1,2\n")
    with pytest.raises(DatasetError, match="bad.csv: header .* needs 'path'"):
        read_plain_csv(tmp_path / "bad.csv")
    (tmp_path / "nan.csv").write_text("path,x,y\na.jpg,nan,2\nb.jpg,,\n")
    with pytest.raises(DatasetError, match="nan.csv: no row has a usable position"):
        read_plain_csv(tmp_path / "nan.csv")


def _line_table(n=21, spacing=1.0):
    x = np.arange(n) * spacing
    return PlaceTable(path=np.array([f"{i}.png" for i in range(n)]), x=x, y=np.zeros(n),
                      yaw=np.zeros(n), timestamp=np.arange(n, dtype=float),
                      traversal=np.array(["reference"] * (n - 1) + ["night"]),
                      condition=np.full(n, "c"), split=np.full(n, "test"))


def test_regions_geojson_and_csv_agree(tmp_path):
    geo = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"split": "train"},
         "geometry": {"type": "Polygon", "coordinates": [[[-1, -1], [8.5, -1], [8.5, 1], [-1, 1],
                                                          [-1, -1]]]}},
        {"type": "Feature", "properties": {"split": "test"},
         "geometry": {"type": "MultiPolygon",
                      "coordinates": [[[[12.5, -1], [30, -1], [30, 1], [12.5, 1]]]]}},
    ]}
    (tmp_path / "r.geojson").write_text(json.dumps(geo))
    (tmp_path / "r.csv").write_text("split,polygon,x,y\ntrain,a,-1,-1\ntrain,a,8.5,-1\n"
                                    "train,a,8.5,1\ntrain,a,-1,1\ntest,b,12.5,-1\ntest,b,30,-1\n"
                                    "test,b,30,1\ntest,b,12.5,1\n")
    for name in ("r.geojson", "r.csv"):
        table, problems = assign_regions(_line_table(), read_regions(tmp_path / name))
        # x = 0..8 train, 9..12 outside, 13..20 test
        assert list(table.split) == ["train"] * 9 + ["test"] * 8
        assert problems[0].kind == "outside_regions" and problems[0].rows == 4


def test_overlapping_regions_are_an_error(tmp_path):
    (tmp_path / "r.csv").write_text("split,polygon,x,y\ntrain,a,-1,-1\ntrain,a,5,-1\ntrain,a,5,1\n"
                                    "test,b,3,-1\ntest,b,9,-1\ntest,b,9,1\ntest,b,3,1\n")
    with pytest.raises(DatasetError, match="make the regions disjoint"):
        assign_regions(_line_table(), read_regions(tmp_path / "r.csv"), "r.csv")
    (tmp_path / "two.csv").write_text("split,x,y\ntrain,0,0\ntrain,1,1\n")
    with pytest.raises(DatasetError, match="fewer than 3"):
        read_regions(tmp_path / "two.csv")


def test_reference_subsampling_by_path_length():
    table, problems = subsample_along(_line_table(spacing=0.75), 2.0)
    # reference frames at 0, 0.75, ... ; kept whenever 2 m have been covered since the last
    # kept one: 0, 2.25 (3 steps), 4.5, 6.75, ... every third frame; the night frame stays
    reference = table.where(traversal="reference")
    assert reference.x == pytest.approx(np.arange(0, 15, 2.25))
    assert len(table.where(traversal="night")) == 1
    assert problems[0].rows == 20 - 7


def test_read_dataset_dispatch_and_unknown_format(tmp_path):
    (tmp_path / "d.csv").write_text("path,x,y,traversal\na.png,0,0,reference\nb.png,1,0,reference\n"
                                    "c.png,2.5,0,reference\n")
    result = read_dataset("csv", tmp_path / "d.csv", reference_spacing=2.0)
    assert list(result.table.path) == ["a.png", "c.png"]
    with pytest.raises(DatasetError, match="unknown dataset format 'kitti'"):
        read_dataset("kitti", tmp_path)
