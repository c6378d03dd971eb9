"""Settings of the procedural town, validated once when built."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

#: Appearance conditions the renderer knows, in the order drives are generated.
CONDITIONS: tuple[str, ...] = ("overcast", "sunny", "night", "snow")

#: Condition of the reference (map) drive.
REFERENCE_CONDITION = "overcast"

#: Name of the reference traversal in the places table.
REFERENCE_TRAVERSAL = "reference"

#: Region names in the order they follow each other along the route.
REGIONS: tuple[str, ...] = ("train", "val", "test")

#: Shortest stretch of route (metres) a region must keep once the gaps are cut out.
MIN_REGION_LENGTH = 20.0

#: Farthest any drive strays from the route's centre line, metres.
MAX_LATERAL = 2.5

#: Extra route cut at region boundaries so that frames up to :data:`MAX_LATERAL` beside the
#: route stay ``region_gap`` apart, metres.
REGION_MARGIN = 2 * MAX_LATERAL + 0.5


@dataclass(frozen=True)
class TownConfig:
    """What to generate: the town, its drives and the images.

    Attributes:
        seed: seeds everything; the same seed gives the same bytes on disk.
        width, height: image size in pixels (at least 16 x 16).
        route_length: length of the closed route every drive follows, metres. The town's
            blocks are scaled so that the route is this long (within a few metres).
        frame_spacing: mean distance between consecutive frames of a drive, metres.
        conditions: conditions of the query drives, one drive each, from
            ``overcast``, ``sunny``, ``night``, ``snow``. The reference drive (traversal
            ``reference``) is always ``overcast`` and comes on top of these.
        fov_deg: horizontal field of view of the camera, degrees.
        camera_height: camera height above the road, metres.
        block_size: nominal side of a city block (street centre to street centre), metres.
        region_fractions: shares of the route given to the ``train``, ``val`` and ``test``
            regions, in that order along the route; they must add up to 1.
        region_gap: least distance (metres) between any two frames of different regions;
            frames in the gaps are dropped.
        query_offset: (least, most) lateral distance of a query drive from the reference
            lane, metres; the offset varies slowly along the drive.
        heading_jitter_deg: amplitude of the slow heading wobble of query drives, degrees.
        view_distance: farthest wall the camera sees, metres.
        png_compress_level: zlib level of the written PNGs (0-9); fixed so bytes repeat.
    """

    seed: int = 0
    width: int = 120
    height: int = 90
    route_length: float = 2400.0
    frame_spacing: float = 1.0
    conditions: tuple[str, ...] = CONDITIONS
    fov_deg: float = 66.0
    camera_height: float = 1.5
    block_size: float = 110.0
    region_fractions: tuple[float, float, float] = (0.60, 0.08, 0.32)
    region_gap: float = 40.0
    query_offset: tuple[float, float] = (1.0, 3.5)
    heading_jitter_deg: float = 3.0
    view_distance: float = 220.0
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        object.__setattr__(
            self, "region_fractions", tuple(float(f) for f in self.region_fractions)
        )
        object.__setattr__(self, "query_offset", tuple(float(f) for f in self.query_offset))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-friendly values."""
        values = asdict(self)
        for key, value in values.items():
            if isinstance(value, tuple):
                values[key] = list(value)
        return values


def _fail(field: str, problem: str, fix: str) -> NoReturn:
    raise ValueError(f"TownConfig.{field}: {problem}; {fix}")


def _validate(c: TownConfig) -> None:
    if c.width < 16:
        _fail("width", f"{c.width} pixels is too small", "use at least 16")
    if c.height < 16:
        _fail("height", f"{c.height} pixels is too small", "use at least 16")
    if not (math.isfinite(c.frame_spacing) and c.frame_spacing > 0):
        _fail("frame_spacing", f"{c.frame_spacing} is not positive", "use e.g. 1.0 metre")
    if not (10.0 <= c.fov_deg <= 150.0):
        _fail("fov_deg", f"{c.fov_deg} degrees is out of range", "use 10 to 150, e.g. 66")
    if not (0.3 <= c.camera_height <= 4.0):
        _fail("camera_height", f"{c.camera_height} m is out of range", "use 0.3 to 4 m")
    if not (40.0 <= c.block_size <= 400.0):
        _fail("block_size", f"{c.block_size} m is out of range", "use 40 to 400 m")
    if not c.conditions:
        _fail("conditions", "is empty", f"name one or more of {', '.join(CONDITIONS)}")
    unknown = [name for name in c.conditions if name not in CONDITIONS]
    if unknown:
        _fail(
            "conditions",
            f"unknown condition(s) {', '.join(map(repr, unknown))}",
            f"choose from {', '.join(CONDITIONS)}",
        )
    if len(c.region_fractions) != 3 or any(f <= 0 for f in c.region_fractions):
        _fail("region_fractions", f"{c.region_fractions} is not three positive shares",
              "give (train, val, test), e.g. (0.6, 0.08, 0.32)")
    if abs(sum(c.region_fractions) - 1.0) > 1e-6:
        _fail("region_fractions", f"{c.region_fractions} adds up to "
              f"{sum(c.region_fractions):.3f}", "make the three shares add up to 1")
    if not (math.isfinite(c.region_gap) and c.region_gap >= 0):
        _fail("region_gap", f"{c.region_gap} is not a distance", "use e.g. 40 metres")
    low, high = c.query_offset if len(c.query_offset) == 2 else (-1.0, -1.0)
    if not (0.0 <= low <= high <= 3.5):
        _fail("query_offset", f"{c.query_offset} is not (least, most) within 0..3.5 m",
              "use e.g. (1.0, 3.5)")
    if not (0.0 <= c.heading_jitter_deg <= 15.0):
        _fail("heading_jitter_deg", f"{c.heading_jitter_deg} is out of range", "use 0 to 15")
    if not (30.0 <= c.view_distance <= 2000.0):
        _fail("view_distance", f"{c.view_distance} m is out of range", "use 30 to 2000 m")
    if not (0 <= c.png_compress_level <= 9):
        _fail("png_compress_level", f"{c.png_compress_level} is not 0-9", "use e.g. 1")
    if not (math.isfinite(c.route_length) and c.route_length > 0):
        _fail("route_length", f"{c.route_length} is not a length", "use e.g. 2400 metres")
    cut = c.region_gap + REGION_MARGIN  # route lost at each region boundary
    shortest = min(c.region_fractions) * c.route_length - cut
    if shortest < MIN_REGION_LENGTH or c.route_length < 2.5 * c.block_size:
        need = max((MIN_REGION_LENGTH + cut) / min(c.region_fractions), 2.5 * c.block_size)
        _fail(
            "route_length",
            f"{c.route_length:g} m is too short for train/val/test regions of "
            f"{c.region_fractions} with {c.region_gap:g} m gaps",
            f"use at least {math.ceil(need)} m, or a smaller region_gap",
        )
