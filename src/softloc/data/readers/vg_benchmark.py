"""The VG-benchmark layout (gmberton's datasets_vg): positions written in the file names.

Layout::

    <root>/images/{train,val,test}/{database,queries}/@east@north@zone@letter@lat@lon@pano@
        tile@heading@pitch@roll@height@timestamp@note@.jpg

``name.split('@')`` gives 16 parts (part 0 and the last, the extension, are ''/'.jpg');
easting and northing are parts 1 and 2 (zero-padded, 2 decimals). Database images get
traversal ``reference``, queries ``query``; the folder gives the split. A heading (compass
degrees) becomes ``yaw``; a ``YYYYMMDD[_hhmmss]`` timestamp becomes UNIX seconds (UTC).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from softloc.atomic import atomic_path
from softloc.data.places import PlaceTable
from softloc.data.readers.geo import compass_to_yaw, utm_to_latlon
from softloc.data.readers.report import DatasetError, Problem, ReadResult

SPLITS = ("train", "val", "test")
SUBSETS = {"database": "reference", "queries": "query"}
_TIMESTAMP = re.compile(r"^\d{4}(\d{2}(\d{2}(_\d{2}(\d{2})?(\d{2})?)?)?)?$")


def format_coord(value: float, left: int, right: int) -> str:
    """Zero-padded fixed-point number as datasets_vg writes it (the sign counts as a digit)."""
    return f"{float(value):0={left + right + 1}.{right}f}"


def parse_timestamp(text: str) -> float | None:
    """``YYYYMMDD[_hh[mm[ss]]]`` (any prefix of it) as UNIX seconds, UTC; None when empty."""
    if not text:
        return None
    if not _TIMESTAMP.match(text):
        raise ValueError(f"timestamp {text!r} is not YYYYMMDD_hhmmss")
    digits = text.replace("_", "")
    parts = [int(digits[0:4]), int(digits[4:6] or 1), int(digits[6:8] or 1),
             int(digits[8:10] or 0), int(digits[10:12] or 0), int(digits[12:14] or 0)]
    return datetime(*parts, tzinfo=timezone.utc).timestamp()


def format_timestamp(seconds: float) -> str:
    """UNIX seconds as ``YYYYMMDD_hhmmss`` (UTC)."""
    return datetime.fromtimestamp(float(seconds), tz=timezone.utc).strftime("%Y%m%d_%H%M%S")


def parse_name(name: str) -> dict[str, object]:
    """The fields of one VG-benchmark file name.

    Raises:
        ValueError: not 16 '@'-separated parts or easting/northing not numbers.
    """
    parts = name.split("@")
    if len(parts) != 16 or parts[0] != "":
        raise ValueError(f"expected 16 '@'-separated fields, got {len(parts)}")
    easting, northing = float(parts[1]), float(parts[2])
    heading = float(parts[9]) if parts[9] else None
    return {
        "easting": easting, "northing": northing,
        "zone_number": int(parts[3]) if parts[3] else None, "zone_letter": parts[4] or None,
        "heading": heading, "timestamp": parse_timestamp(parts[13]), "note": parts[14],
    }


def read_vg_benchmark(root: str | os.PathLike[str]) -> ReadResult:
    """Read every ``images/<split>/<database|queries>/**/*.jpg`` under ``root``.

    Raises:
        DatasetError: no ``images/<split>/...`` folder, or no image name can be parsed.
    """
    root = Path(root)
    columns: dict[str, list] = {c: [] for c in
                                ("path", "x", "y", "yaw", "timestamp", "traversal", "split")}
    problems: list[Problem] = []
    zones: set[tuple[int, str]] = set()
    found_folder = False
    for split in SPLITS:
        for subset, traversal in SUBSETS.items():
            folder = root / "images" / split / subset
            if not folder.is_dir():
                continue
            found_folder = True
            for path in sorted(folder.glob("**/*.jpg")):
                try:
                    fields = parse_name(path.name)
                except ValueError as error:
                    problems.append(Problem("bad_row", str(path), f"file name: {error}"))
                    continue
                if not (np.isfinite(fields["easting"]) and np.isfinite(fields["northing"])):
                    problems.append(Problem("no_position", str(path), "NaN easting/northing"))
                    continue
                if fields["zone_number"] and fields["zone_letter"]:
                    zones.add((int(fields["zone_number"]), str(fields["zone_letter"])))
                columns["path"].append(path.relative_to(root).as_posix())
                columns["x"].append(fields["easting"])
                columns["y"].append(fields["northing"])
                heading = fields["heading"]
                columns["yaw"].append(0.0 if heading is None else float(compass_to_yaw(heading)))
                columns["timestamp"].append(fields["timestamp"] or 0.0)
                columns["traversal"].append(traversal)
                columns["split"].append(split)
    if not found_folder:
        raise DatasetError(
            f"{root}: no images/{{train,val,test}}/{{database,queries}} folder; give the "
            "dataset folder of a VG-benchmark layout (the one holding images/)"
        )
    if not columns["path"]:
        raise DatasetError(f"{root}: no image with a parsable @-name ({len(problems)} bad)")
    n = len(columns["path"])
    table = PlaceTable(**{k: np.asarray(v) for k, v in columns.items()},
                       condition=np.full(n, "all"), root=root)
    has_times = bool(np.any(table.timestamp != 0))
    zone = zones.pop() if len(zones) == 1 else None
    return ReadResult(table, problems, dataset="vg", has_timestamps=has_times, zone=zone)


def vg_name(
    easting: float, northing: float, zone_number: int | None = None,
    zone_letter: str | None = None, heading_deg: float | None = None,
    timestamp: float | None = None, note: str = "", pano_id: str = "",
) -> str:
    """A file name in the datasets_vg convention (lat/lon filled when the zone is known)."""
    lat = lon = ""
    if zone_number:
        la, lo = utm_to_latlon(np.array([easting]), np.array([northing]), zone_number,
                               zone_letter or "N")
        lat, lon = format_coord(la[0], 3, 5), format_coord(lo[0], 4, 5)
    fields = [
        "", format_coord(easting, 7, 2), format_coord(northing, 7, 2),
        f"{zone_number:02d}" if zone_number else "", zone_letter or "", lat, lon, pano_id, "",
        f"{int(round(heading_deg)) % 360:03d}" if heading_deg is not None else "", "", "", "",
        format_timestamp(timestamp) if timestamp else "", note.replace("@", "_"), ".jpg",
    ]
    return "@".join(fields)


def write_vg_benchmark(
    table: PlaceTable, out: str | os.PathLike[str], zone_number: int | None = None,
    zone_letter: str | None = None, loader: Callable[[Path], np.ndarray] | None = None,
) -> list[Path]:
    """Write ``table`` in the VG-benchmark layout: rows of traversal ``reference`` go to
    ``database``, every other traversal to ``queries``; JPEG quality 95, atomic writes.

    Returns the written paths, in table order.
    """
    from softloc.data.images import load_image

    load = loader or load_image
    out = Path(out)
    written = []
    for i in range(len(table)):
        subset = "database" if table.traversal[i] == "reference" else "queries"
        heading = float(np.degrees(np.pi / 2 - table.yaw[i])) % 360.0
        name = vg_name(table.x[i], table.y[i], zone_number, zone_letter, heading,
                       table.timestamp[i] or None, note=f"{table.condition[i]}", pano_id=str(i))
        target = out / "images" / str(table.split[i]) / subset / name
        written.append(target)
        if target.is_file():  # written by an earlier run (atomic: complete)
            continue
        image = load(table.image_path(i))
        with atomic_path(target) as tmp:
            Image.fromarray(image).save(tmp, format="JPEG", quality=95)
    return written
