"""places.csv read in chunks: the values of one float() per cell, errors at the right line,
and memory bounded by the arrays, not by Python lists of every row."""

from __future__ import annotations

import csv
import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from softloc.data import places as places_module
from softloc.data.places import COLUMNS, PlacesError, read_places


def write_rows(path: Path, rows: list[list[str]], newline: str = "\n") -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return path


def random_rows(count: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=1e4, size=count)
    y = rng.uniform(-1e6, 1e6, size=count)
    yaw = rng.uniform(-np.pi, np.pi, size=count)
    stamp = 1.4e9 + rng.uniform(0, 1e7, size=count)
    return [[f"drive/{i:07d}.png", repr(float(x[i])), f"{y[i]:.17g}", str(float(yaw[i])),
             repr(float(stamp[i])), f"drive{i % 3}", "overcast", ("Train", "val", "test")[i % 3]]
            for i in range(count)]


@pytest.fixture
def small_chunks(monkeypatch) -> int:
    monkeypatch.setattr(places_module, "READ_CHUNK_ROWS", 7)
    return 7


def test_every_value_is_the_one_float_gives(tmp_path: Path, small_chunks: int) -> None:
    rows = random_rows(50)
    rows[9][4] = "2015-02-10T11:58:05.5Z"  # ISO: that chunk goes cell by cell
    rows[20][4] = "1423569485123"  # epoch milliseconds
    rows[33][1] = "1_000.5"  # Python's float takes underscores
    table = read_places(write_rows(tmp_path / "places.csv", rows))
    assert len(table) == 50
    for column, at in (("x", 1), ("y", 2), ("yaw", 3)):
        expected = [float(row[at]) for row in rows]
        assert getattr(table, column).tolist() == expected  # bit for bit
    assert table.timestamp[9] == pytest.approx(1423569485.5)
    assert table.timestamp[20] == pytest.approx(1423569485.123)
    assert table.timestamp[0] == float(rows[0][4])
    assert table.path.tolist() == [row[0] for row in rows]
    assert table.split.tolist() == [("train", "val", "test")[i % 3] for i in range(50)]


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_windows_and_old_mac_line_endings_read_alike(tmp_path: Path, newline: str,
                                                     small_chunks: int) -> None:
    rows = random_rows(20, seed=1)
    plain = read_places(write_rows(tmp_path / "a.csv", rows))
    other = read_places(write_rows(tmp_path / "b.csv", rows, newline=newline))
    for column in COLUMNS:
        assert np.array_equal(getattr(plain, column), getattr(other, column))


@pytest.mark.parametrize(("row", "column", "value", "says"), [
    (30, 2, "12,5", "holds '12,5', not a number"),
    (41, 1, "nan", "is 'nan'"),
    (16, 6, "", "column 'condition' is empty"),
])
def test_a_bad_cell_in_a_later_chunk_names_its_line(
    tmp_path: Path, small_chunks: int, row: int, column: int, value: str, says: str
) -> None:
    rows = random_rows(45, seed=2)
    rows[row][column] = value
    with pytest.raises(PlacesError) as caught:
        read_places(write_rows(tmp_path / "places.csv", rows))
    assert f"places.csv, line {row + 2}:" in str(caught.value)  # the header is line 1
    assert says in str(caught.value)


def test_memory_is_bounded_by_the_arrays_not_by_lists_of_rows(
    tmp_path: Path, monkeypatch
) -> None:
    """Reading 60 k rows peaks at under twice the text plus the table's own arrays; holding
    every row as Python lists of strings (as before) costs several times that."""
    monkeypatch.setattr(places_module, "READ_CHUNK_ROWS", 2048)
    path = write_rows(tmp_path / "places.csv", random_rows(60_000, seed=3))
    tracemalloc.start()
    try:
        table = read_places(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    arrays = sum(getattr(table, c).nbytes for c in COLUMNS)
    assert len(table) == 60_000
    assert peak < 2 * (arrays + path.stat().st_size), (peak, arrays, path.stat().st_size)
