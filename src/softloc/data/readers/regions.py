"""Train/val/test regions as polygons, and reference subsampling along a drive.

Regions are polygons in the table's metric frame (easting/northing), given as

- GeoJSON: a FeatureCollection whose features have ``properties.split`` and a ``Polygon`` or
  ``MultiPolygon`` geometry (first ring of each polygon is used; holes are ignored), or
- a CSV of vertices with columns ``split, x, y`` and optional ``polygon`` (an id; vertices of
  one polygon are consecutive rows in order).

A row outside every polygon is dropped and counted; a row inside polygons of two different
splits is an error (the regions overlap: fix the file), as in the authors' split script. Split
names are case-insensitive (``Train`` is ``train``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.path import Path as PolygonPath

from softloc.data.csv_text import read_csv_text, read_text_file
from softloc.data.places import PlaceTable, normalise_split
from softloc.data.readers.report import DatasetError, Problem


@dataclass(frozen=True)
class Region:
    """One polygon with its split."""

    split: str
    vertices: np.ndarray  # (K, 2)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        return PolygonPath(self.vertices).contains_points(xy)


def _geojson_regions(path: Path) -> list[Region]:
    try:
        data = json.loads(read_text_file(path, DatasetError))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        raise DatasetError(f"{path}: expected a GeoJSON FeatureCollection with 'features'")
    regions = []
    for i, feature in enumerate(features):
        split = (feature.get("properties") or {}).get("split")
        geometry = feature.get("geometry") or {}
        kind, coords = geometry.get("type"), geometry.get("coordinates")
        if not split or kind not in ("Polygon", "MultiPolygon") or not coords:
            raise DatasetError(f"{path}: feature {i} needs properties.split and a Polygon or "
                               "MultiPolygon geometry in easting/northing")
        polygons = [coords] if kind == "Polygon" else coords
        for polygon in polygons:
            regions.append(Region(normalise_split(str(split)),
                                  np.asarray(polygon[0], dtype=np.float64)[:, :2]))
    return regions


def _csv_regions(path: Path) -> list[Region]:
    text = read_csv_text(path, DatasetError, lower_header=True)
    if not {"split", "x", "y"} <= set(text.header):
        raise DatasetError(f"{path}: header {text.header} (as read) needs split, x, y (and "
                           f"optionally polygon): one row per vertex{text.separator_hint()}")
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for line, row in zip(text.lines, text.dicts(), strict=True):
        try:
            vertex = (float(row["x"]), float(row["y"]))
        except (TypeError, ValueError):
            raise DatasetError(f"{path}, line {line}: x/y not numbers ({row['x']!r}, "
                               f"{row['y']!r})") from None
        key = (normalise_split(row["split"]), row.get("polygon") or "")
        groups.setdefault(key, []).append(vertex)
    return [Region(split, np.asarray(v)) for (split, _), v in groups.items()]


def read_regions(path: str | os.PathLike[str]) -> list[Region]:
    """Polygons from a GeoJSON (``.geojson``/``.json``) or vertex CSV file.

    Raises:
        DatasetError: missing file, wrong structure, or a polygon with fewer than 3 vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such regions file")
    regions = _geojson_regions(path) if path.suffix in (".json", ".geojson") else _csv_regions(path)
    if not regions:
        raise DatasetError(f"{path}: no polygon found")
    for region in regions:
        if len(region.vertices) < 3 or not np.isfinite(region.vertices).all():
            raise DatasetError(f"{path}: a '{region.split}' polygon has fewer than 3 finite "
                               "vertices")
    return regions


def assign_regions(
    table: PlaceTable, regions: list[Region], source: str = "regions"
) -> tuple[PlaceTable, list[Problem]]:
    """Set each row's split from the polygon it lies in; drop rows outside every polygon."""
    xy = table.xy
    split = np.full(len(table), "", dtype=object)
    for region in regions:
        inside = region.contains(xy)
        clash = inside & (split != "") & (split != region.split)
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            raise DatasetError(
                f"{source}: point ({xy[i, 0]:.1f}, {xy[i, 1]:.1f}) of {table.path[i]} lies in a "
                f"'{split[i]}' and a '{region.split}' polygon; make the regions disjoint"
            )
        split[inside] = region.split
    outside = split == ""
    problems = []
    if outside.any():
        problems.append(Problem("outside_regions", source,
                                f"e.g. {table.path[np.flatnonzero(outside)[0]]}",
                                rows=int(outside.sum())))
    kept = table.subset(~outside)
    columns = {c: getattr(kept, c) for c in ("path", "x", "y", "yaw", "timestamp", "traversal",
                                             "condition")}
    return PlaceTable(**columns, split=split[~outside].astype(str), root=table.root), problems


def subsample_along(
    table: PlaceTable, spacing: float, traversal: str = "reference"
) -> tuple[PlaceTable, list[Problem]]:
    """Keep a frame of ``traversal`` each time the drive has covered ``spacing`` metres.

    Walks the traversal in time order, summing the distance between consecutive frames; a
    frame is kept when the path length since the last kept frame reaches ``spacing``. Rows of
    other traversals are untouched.
    """
    if not np.isfinite(spacing) or spacing < 0:
        raise DatasetError(f"reference spacing must be a distance >= 0 metres (0 keeps every "
                           f"frame), got {spacing}")
    if spacing == 0:
        return table, []
    keep = np.ones(len(table), dtype=bool)
    rows = np.flatnonzero(table.traversal == traversal)
    rows = rows[np.argsort(table.timestamp[rows], kind="stable")]
    travelled = 0.0
    for previous, current in zip(rows[:-1], rows[1:], strict=True):
        travelled += float(np.hypot(table.x[current] - table.x[previous],
                                    table.y[current] - table.y[previous]))
        if travelled >= spacing:
            travelled = 0.0
        else:
            keep[current] = False
    dropped = int((~keep).sum())
    if not dropped:
        return table, []
    return table.subset(keep), [Problem("subsampled", traversal, f"every {spacing:g} m", dropped)]
