from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from softloc.data.places import COLUMNS, PlacesError, read_places, write_places


def test_round_trip_keeps_every_value(street, tmp_path: Path) -> None:
    again = read_places(tmp_path)
    assert len(again) == len(street)
    np.testing.assert_array_equal(again.x, street.x)
    np.testing.assert_array_equal(again.timestamp, street.timestamp)
    assert again.traversals() == ["reference", "night"]
    assert again.image_path(0) == tmp_path / street.path[0]
    assert (tmp_path / "places.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


def test_where_and_subset(street) -> None:
    test_night = street.where(split="test", condition="night")
    assert len(test_night) > 0
    assert set(test_night.split) == {"test"} and set(test_night.condition) == {"night"}
    assert np.all((test_night.x >= 80) & (test_night.x < 100))
    assert street.subset(np.array([2, 0])).path.tolist() == [street.path[2], street.path[0]]


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


def test_missing_column_is_named(street, tmp_path: Path) -> None:
    csv_path = tmp_path / "places.csv"
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, c in enumerate(header) if c != "yaw"]
    csv_path.write_text(
        "\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n"
    )
    with pytest.raises(PlacesError, match="missing column.*yaw"):
        read_places(tmp_path)


def test_nan_coordinate_names_line(street, tmp_path: Path) -> None:
    csv_path = tmp_path / "places.csv"
    lines = csv_path.read_text().splitlines()
    parts = lines[3].split(",")
    parts[1] = "nan"
    lines[3] = ",".join(parts)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PlacesError, match=r"line 4: column 'x'"):
        read_places(csv_path)


def test_text_in_number_column(street, tmp_path: Path) -> None:
    csv_path = tmp_path / "places.csv"
    lines = csv_path.read_text().splitlines()
    parts = lines[1].split(",")
    parts[2] = "north"
    lines[1] = ",".join(parts)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PlacesError, match="not a number"):
        read_places(csv_path)


def test_empty_table_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlacesError, match="no such places file"):
        read_places(tmp_path)
    (tmp_path / "places.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(PlacesError, match="no rows"):
        read_places(tmp_path)


def test_missing_images_detected(street, tmp_path: Path) -> None:
    (tmp_path / street.path[5]).unlink()
    read_places(tmp_path)  # not checked by default
    with pytest.raises(PlacesError, match="1 image"):
        read_places(tmp_path, check_images=True)


def test_write_is_atomic_and_leaves_no_temp(street, tmp_path: Path) -> None:
    target = tmp_path / "out" / "places.csv"
    write_places(street, target)
    assert [p.name for p in target.parent.iterdir()] == ["places.csv"]
