"""Mapillary Street-Level Sequences (MSLS) train/val folders with their CSVs.

Layout::

    <root>/train_val/<city>/{query,database}/images/<key>.jpg
    <root>/train_val/<city>/{query,database}/postprocessed.csv   ,key,easting,northing,
                                                                  unique_cluster,control_panel,
                                                                  night,view_direction
    <root>/train_val/<city>/{query,database}/raw.csv             ,key,lon,lat,ca,captured_at,pano

The CSVs are pandas-written: the first, unnamed column is the row index, and rows of the
files of one folder line up by it (the MSLS tools read them with ``index_col=0``). Conditions
are ``day|night`` and the view direction, e.g. ``night_sideways``. Panoramas are skipped, as
in the MSLS tools. Database rows get traversal ``reference``, queries ``query``; train cities
split ``train``, cph and sf split ``val``.

MSLS stores no UTM zone: each city is in its own zone, so positions of two cities must never
be compared. Evaluate one city at a time (``--cities``); the reader reports cities whose
coordinate boxes overlap.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from softloc.data.csv_text import read_csv_text
from softloc.data.places import PlaceTable
from softloc.data.readers.geo import compass_to_yaw
from softloc.data.readers.report import DatasetError, Problem, ReadResult
from softloc.data.timestamps import parse_angle, parse_timestamp

TRAIN_CITIES = (
    "trondheim", "london", "boston", "melbourne", "amsterdam", "helsinki", "tokyo", "toronto",
    "saopaulo", "moscow", "zurich", "paris", "bangkok", "budapest", "austin", "berlin",
    "ottawa", "phoenix", "goa", "amman", "nairobi", "manila",
)
VAL_CITIES = ("cph", "sf")
SUBSETS = {"database": "reference", "query": "query"}
POSTPROCESSED_COLUMNS = ("key", "easting", "northing", "night", "view_direction")
RAW_COLUMNS = ("key", "ca", "captured_at", "pano")


def read_indexed_csv(path: Path, needed: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """A pandas-written CSV as ``{index: row}``, checking the header by name.

    Raises:
        DatasetError: missing file or column (the message names both).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: missing; extract the MSLS archive with its CSV files")
    text = read_csv_text(path, DatasetError)
    header = text.header
    missing = [c for c in needed if c not in header]
    if missing or not header or header[0] != "":
        raise DatasetError(
            f"{path}: header {header} lacks {missing or 'the leading index column'}; "
            "expected a pandas-written MSLS CSV: header starting with ',' (the index) and "
            f"holding {', '.join(needed)}{text.separator_hint()}"
        )
    return {row[0]: dict(zip(header, row, strict=False)) for row in text.rows}


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def read_msls(
    root: str | os.PathLike[str], cities: list[str] | None = None, include_panoramas: bool = False
) -> ReadResult:
    """Read the MSLS ``train_val`` cities under ``root`` (all present, or ``cities``).

    Raises:
        DatasetError: no ``train_val`` folder or none of the cities found.
    """
    root = Path(root)
    base = root / "train_val"
    if not base.is_dir():
        raise DatasetError(f"{root}: no train_val/ folder; give the MSLS root folder (test "
                           "cities have no positions and cannot be read)")
    present = sorted(p.name for p in base.iterdir() if p.is_dir())
    wanted = present if cities is None else list(cities)
    problems = [Problem("missing_metadata", str(base / c), f"city {c} not found")
                for c in wanted if c not in present]
    wanted = [c for c in wanted if c in present]
    columns: dict[str, list] = {c: [] for c in
                                ("path", "x", "y", "yaw", "timestamp", "traversal", "condition",
                                 "split")}
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for city in wanted:
        split = "val" if city in VAL_CITIES else "train"
        city_xy = []
        for subset, traversal in SUBSETS.items():
            folder = base / city / subset
            try:
                post = read_indexed_csv(folder / "postprocessed.csv", POSTPROCESSED_COLUMNS)
                raw = read_indexed_csv(folder / "raw.csv", RAW_COLUMNS)
            except DatasetError as error:
                problems.append(Problem("missing_metadata", str(folder), str(error)))
                continue
            for index, row in post.items():
                raw_row = raw.get(index)
                if raw_row is None or raw_row["key"] != row["key"]:
                    problems.append(Problem("bad_row", str(folder / "raw.csv"),
                                            f"index {index}: no raw.csv row for key {row['key']}"))
                    continue
                if _truthy(raw_row["pano"]) and not include_panoramas:
                    problems.append(Problem("panorama", str(folder / "raw.csv"), row["key"]))
                    continue
                try:
                    x, y = float(row["easting"]), float(row["northing"])
                except ValueError:
                    x = y = float("nan")
                if not (np.isfinite(x) and np.isfinite(y)):
                    problems.append(Problem("no_position", str(folder / "postprocessed.csv"),
                                            f"index {index}, key {row['key']}"))
                    continue
                try:
                    yaw = float(compass_to_yaw(parse_angle(raw_row["ca"])))
                except ValueError as error:
                    problems.append(Problem("bad_yaw", str(folder / "raw.csv"),
                                            f"index {index}, key {row['key']}: ca {error}"))
                    continue
                try:
                    stamp = parse_timestamp(raw_row["captured_at"])
                except ValueError as error:
                    problems.append(Problem("bad_timestamp", str(folder / "raw.csv"),
                                            f"index {index}, key {row['key']}: captured_at: "
                                            f"{error}"))
                    continue
                night = "night" if _truthy(row["night"]) else "day"
                view = (row["view_direction"] or "unknown").strip().lower()
                columns["path"].append(f"train_val/{city}/{subset}/images/{row['key']}.jpg")
                columns["x"].append(x)
                columns["y"].append(y)
                columns["yaw"].append(yaw)
                columns["timestamp"].append(stamp)
                columns["traversal"].append(traversal)
                columns["condition"].append(f"{night}_{view}")
                columns["split"].append(split)
                city_xy.append((x, y))
        if city_xy:
            xy = np.asarray(city_xy)
            boxes[city] = (*xy.min(axis=0), *xy.max(axis=0))
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            if ax0 <= bx1 and bx0 <= ax1 and ay0 <= by1 and by0 <= ay1:
                problems.append(Problem("unexpected_zone", str(base), f"{a} and {b} overlap in "
                                        "UTM metres (different zones): evaluate them apart",
                                        rows=0))
    if not columns["path"]:
        raise DatasetError(f"{base}: no usable image in cities {wanted or present}; "
                           f"{problems[0].detail if problems else 'check the CSV files'}")
    table = PlaceTable(**{k: np.asarray(v) for k, v in columns.items()}, root=root)
    return ReadResult(table, problems, dataset="msls", has_timestamps=False)
