"""A plain CSV of a user's own drive: one row per image.

Columns (by name, any order; extra columns are ignored):

- ``path``: image path, relative to the CSV's folder (or to ``images_root``);
- position: ``x`` and ``y`` in metres (e.g. UTM easting/northing), or ``lat`` and ``lon`` in
  WGS84 degrees, converted to UTM in the drive's most common zone;
- optional ``yaw`` (radians counter-clockwise from +x) or ``heading`` (compass degrees,
  clockwise from north), ``timestamp`` (seconds), ``traversal``, ``condition``, ``split``.

Rows without a usable position are dropped and counted; repeated timestamps within one
traversal are dropped (the later row) when timestamps are given.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from softloc.data.places import PlaceTable
from softloc.data.readers.geo import compass_to_yaw, latlon_to_utm
from softloc.data.readers.report import (
    DatasetError,
    Problem,
    ReadResult,
    drop_duplicate_timestamps,
)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def read_plain_csv(
    path: str | os.PathLike[str],
    images_root: str | os.PathLike[str] | None = None,
    traversal: str | None = None,
    condition: str = "unlabelled",
    split: str = "test",
) -> ReadResult:
    """Read a user's CSV; defaults label every row (traversal: the file's stem).

    Raises:
        DatasetError: missing file, no ``path`` column, no position columns, no usable row.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such CSV file")
    root = Path(images_root) if images_root is not None else path.parent
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        rows = list(reader)
    metric = {"x", "y"} <= set(header)
    geographic = {"lat", "lon"} <= set(header)
    if "path" not in header or not (metric or geographic):
        raise DatasetError(
            f"{path}: header {header} needs 'path' and either x,y (metres) or lat,lon "
            "(degrees); optional yaw or heading, timestamp, traversal, condition, split"
        )
    if not rows:
        raise DatasetError(f"{path}: the CSV has a header but no rows")
    first = "x" if metric else "lat"
    second = "y" if metric else "lon"
    a = np.array([_number(r[first]) for r in rows])
    b = np.array([_number(r[second]) for r in rows])
    problems: list[Problem] = []
    usable = np.isfinite(a) & np.isfinite(b) & np.array([bool(r["path"]) for r in rows])
    if geographic and not metric:
        usable &= (np.abs(a) <= 84) & (a >= -80) & (np.abs(b) <= 180)
    for line in np.flatnonzero(~usable):
        problems.append(Problem("no_position", str(path),
                                f"line {line + 2}: {first}={rows[line][first]!r}, "
                                f"{second}={rows[line][second]!r}"))
    rows = [r for r, ok in zip(rows, usable, strict=True) if ok]
    a, b = a[usable], b[usable]
    if not rows:
        raise DatasetError(f"{path}: no row has a usable position ({len(problems)} rows "
                           f"without); fill the {first},{second} columns")
    zone = None
    if metric:
        x, y = a, b
    else:
        points = latlon_to_utm(a, b)
        x, y = points.easting, points.northing
        zone = (points.zone_number, points.zone_letter)
        for line in np.flatnonzero(points.other_zone):
            problems.append(Problem("unexpected_zone", str(path),
                                    f"{rows[line]['path']}: outside UTM zone "
                                    f"{points.zone_number}{points.zone_letter}, projected into it",
                                    rows=0))
    if "yaw" in header:
        yaw = np.array([_number(r["yaw"]) for r in rows])
    elif "heading" in header:
        yaw = compass_to_yaw(np.array([_number(r["heading"]) for r in rows]))
    else:
        yaw = np.zeros(len(rows))
    yaw = np.where(np.isfinite(yaw), np.mod(yaw, 2 * np.pi), 0.0)
    has_times = "timestamp" in header
    stamps = np.array([_number(r["timestamp"]) for r in rows]) if has_times else np.zeros(len(rows))
    stamps = np.where(np.isfinite(stamps), stamps, 0.0)

    def label(name: str, default: str) -> np.ndarray:
        return np.array([(r.get(name) or "").strip() or default for r in rows])

    table = PlaceTable(
        path=np.array([r["path"].strip() for r in rows]), x=x, y=y, yaw=yaw, timestamp=stamps,
        traversal=label("traversal", traversal or path.stem),
        condition=label("condition", condition), split=label("split", split), root=root,
    )
    if has_times:
        table, duplicates = drop_duplicate_timestamps(table, str(path))
        problems += duplicates
    return ReadResult(table, problems, dataset="csv", has_timestamps=has_times, zone=zone)
