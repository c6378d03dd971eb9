"""A plain CSV of a user's own drive: one row per image.

Columns (by name, any order, case-insensitive; extra columns are ignored):

- ``path``: image path, relative to the CSV's folder (or to ``images_root``);
- position: ``x`` and ``y`` in metres (e.g. UTM easting/northing), or ``lat`` and ``lon`` in
  WGS84 degrees, converted to UTM in the drive's most common zone;
- optional ``yaw`` (radians counter-clockwise from +x) or ``heading`` (compass degrees,
  clockwise from north), ``timestamp`` (epoch seconds, milliseconds or microseconds, or
  ISO-8601: :mod:`softloc.data.timestamps`), ``traversal``, ``condition``, ``split``.

The text rules (UTF-8 or a BOM-marked UTF-16, spaces after commas) are those of
:mod:`softloc.data.csv_text`. Each row that cannot be used is dropped and reported, never read
as 0: an empty path (``bad_row``), no usable position (``no_position``), a yaw or heading that
is not a number (``bad_yaw``), a timestamp that cannot be parsed (``bad_timestamp``). When the
same image is listed twice, the first row is kept if the others lie within
:data:`SAME_PLACE_M` of it (``duplicate_image``); if they lie farther apart every row of that
image is dropped (``conflicting_positions``), since nothing tells which position is right.
Repeated timestamps within one traversal are dropped (the later row).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from softloc.data.csv_text import read_csv_text
from softloc.data.places import PlaceTable, normalise_split
from softloc.data.readers.geo import compass_to_yaw, latlon_to_utm
from softloc.data.readers.report import (
    DatasetError,
    Problem,
    ReadResult,
    drop_duplicate_timestamps,
)
from softloc.data.timestamps import parse_angle, parse_timestamp

#: Rows listing one image closer than this (metres) are the same place: the first is kept.
SAME_PLACE_M = 1.0


def _number(text: str) -> float:
    try:
        return float(text) if text else float("nan")
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
        DatasetError: missing or undecodable file, no ``path`` column, no position columns,
            no usable row (the message names the file, shows the header read and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such CSV file")
    root = Path(images_root) if images_root is not None else path.parent
    text = read_csv_text(path, DatasetError, lower_header=True)
    header = text.header
    metric = {"x", "y"} <= set(header)
    geographic = {"lat", "lon"} <= set(header)
    if "path" not in header or not (metric or geographic):
        raise DatasetError(
            f"{path}: header {header} (as read) needs 'path' and either x,y (metres) or lat,lon "
            "(degrees); optional yaw or heading, timestamp, traversal, condition, split"
            f"{text.separator_hint()}"
        )
    rows = text.dicts()
    lines = list(text.lines)
    if not rows:
        raise DatasetError(f"{path}: the CSV has a header but no rows")
    first, second = ("x", "y") if metric else ("lat", "lon")
    problems: list[Problem] = []
    kept_rows, kept_lines, a_values, b_values, yaws, stamps = [], [], [], [], [], []
    angle_column = "yaw" if "yaw" in header else "heading" if "heading" in header else None
    has_times = "timestamp" in header
    for line, row in zip(lines, rows, strict=True):
        if not row["path"]:
            problems.append(Problem("bad_row", str(path), f"line {line}: empty path"))
            continue
        a, b = _number(row[first]), _number(row[second])
        usable = np.isfinite(a) and np.isfinite(b)
        if usable and not metric:
            usable = abs(a) <= 84 and a >= -80 and abs(b) <= 180
        if not usable:
            problems.append(Problem("no_position", str(path),
                                    f"line {line}: {first}={row[first]!r}, "
                                    f"{second}={row[second]!r}"))
            continue
        yaw = 0.0
        if angle_column is not None:
            try:
                yaw = parse_angle(row[angle_column])
            except ValueError as error:
                problems.append(Problem("bad_yaw", str(path),
                                        f"line {line}: {angle_column} {error}"))
                continue
            if angle_column == "heading":
                yaw = float(compass_to_yaw(yaw))
        stamp = 0.0
        if has_times:
            try:
                stamp = parse_timestamp(row["timestamp"])
            except ValueError as error:
                problems.append(Problem("bad_timestamp", str(path), f"line {line}: {error}"))
                continue
        kept_rows.append(row)
        kept_lines.append(line)
        a_values.append(a)
        b_values.append(b)
        yaws.append(yaw)
        stamps.append(stamp)
    if not kept_rows:
        kinds = sorted({p.kind for p in problems})
        raise DatasetError(f"{path}: no row has a usable position, path, heading and time "
                           f"({len(problems)} dropped: {', '.join(kinds)}, e.g. "
                           f"{problems[0].detail}); fill the path and {first},{second} columns")
    rows, lines = kept_rows, kept_lines
    a, b = np.asarray(a_values), np.asarray(b_values)
    zone = None
    if metric:
        x, y = a, b
    else:
        points = latlon_to_utm(a, b)
        x, y = points.easting, points.northing
        zone = (points.zone_number, points.zone_letter)
        for i in np.flatnonzero(points.other_zone):
            problems.append(Problem("unexpected_zone", str(path),
                                    f"{rows[i]['path']}: outside UTM zone "
                                    f"{points.zone_number}{points.zone_letter}, projected into it",
                                    rows=0))

    def label(name: str, default: str) -> np.ndarray:
        return np.array([r.get(name) or default for r in rows])

    table = PlaceTable(
        path=np.array([r["path"] for r in rows]), x=x, y=y,
        yaw=np.mod(np.asarray(yaws, dtype=np.float64), 2 * np.pi),
        timestamp=np.asarray(stamps, dtype=np.float64),
        traversal=label("traversal", traversal or path.stem),
        condition=label("condition", condition),
        split=np.array([normalise_split(s) for s in label("split", split)]), root=root,
    )
    table, duplicates = drop_repeated_images(table, np.asarray(lines), str(path))
    problems += duplicates
    if len(table) == 0:
        raise DatasetError(f"{path}: every row lists an image also listed elsewhere at another "
                           f"position (e.g. {problems[-1].detail})")
    if has_times:
        table, repeated = drop_duplicate_timestamps(table, str(path))
        problems += repeated
    return ReadResult(table, problems, dataset="csv", has_timestamps=has_times, zone=zone)


def drop_repeated_images(
    table: PlaceTable, lines: np.ndarray, source: str, same_place_m: float = SAME_PLACE_M
) -> tuple[PlaceTable, list[Problem]]:
    """Keep one row per image file; report repeats (see the module docstring for the rule)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(table.path):
        groups.setdefault(os.path.normpath(os.path.join(table.root, name)), []).append(i)
    keep = np.ones(len(table), dtype=bool)
    problems = []
    for rows in groups.values():
        if len(rows) == 1:
            continue
        first = rows[0]
        apart = np.hypot(table.x[rows] - table.x[first], table.y[rows] - table.y[first])
        where = ", ".join(str(int(lines[i])) for i in rows)
        if apart.max() <= same_place_m:
            keep[rows[1:]] = False
            problems.append(Problem("duplicate_image", source,
                                    f"{table.path[first]}: listed on lines {where}; the first "
                                    "row is kept", rows=len(rows) - 1))
        else:
            keep[rows] = False
            problems.append(Problem("conflicting_positions", source,
                                    f"{table.path[first]}: listed on lines {where} at positions "
                                    f"up to {apart.max():.1f} m apart; fix the rows and prepare "
                                    "again", rows=len(rows)))
    return table.subset(keep), problems
