"""The static town: street grid, route, buildings, trees, lamps and signs.

Everything here depends only on the seed and is the same on every drive. Things that differ
between drives (parked cars, people, bins, light) live in :mod:`.scene`.

Layout across a street, from its centre line: two driving lanes (the reference drives at
:data:`REFERENCE_LANE`), a parking lane, the curb at :data:`ROAD_HALF`, a sidewalk of
:data:`SIDEWALK` metres, then the property line of the block, where buildings start (some set
back from it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softloc.data.synthetic.config import (
    MIN_REGION_LENGTH,
    REGION_MARGIN,
    TownConfig,
)
from softloc.data.synthetic.route import (
    Route,
    StreetGrid,
    build_route,
    region_labels,
    start_route,
)
from softloc.data.synthetic.sprites import LAMP, SIGN, TREE, Sprites
from softloc.data.synthetic.walls import FACADE, PLAIN, Walls, box_walls

#: Half width of the carriageway (curb to street centre), metres.
ROAD_HALF = 6.0
#: Width of the sidewalk between the curb and the property line, metres.
SIDEWALK = 3.0
#: Lateral position of the reference drive (left of the route's centre line), metres.
REFERENCE_LANE = 1.75
#: Lateral position of the centre of the parking lanes, metres from the street centre.
PARKING_LANE = 4.9

#: Wall albedos (RGB 0-1): brick, stone, render, concrete, painted.
WALL_COLOURS = np.array(
    [
        (0.56, 0.26, 0.19), (0.42, 0.21, 0.16), (0.76, 0.66, 0.47), (0.86, 0.81, 0.66),
        (0.86, 0.86, 0.83), (0.56, 0.56, 0.56), (0.34, 0.35, 0.38), (0.53, 0.63, 0.76),
        (0.59, 0.72, 0.54), (0.87, 0.76, 0.38), (0.81, 0.55, 0.55), (0.46, 0.33, 0.22),
        (0.70, 0.45, 0.30), (0.30, 0.42, 0.36),
    ],
    dtype=np.float32,
)
TRIM_COLOURS = np.array(
    [(0.92, 0.91, 0.88), (0.20, 0.20, 0.22), (0.70, 0.66, 0.58), (0.45, 0.30, 0.20)],
    dtype=np.float32,
)
SIGN_COLOURS = np.array(
    [
        (0.85, 0.12, 0.10), (0.12, 0.25, 0.75), (0.10, 0.55, 0.22), (0.95, 0.80, 0.10),
        (0.95, 0.50, 0.08), (0.50, 0.15, 0.60), (0.95, 0.95, 0.95), (0.08, 0.08, 0.08),
        (0.10, 0.65, 0.70),
    ],
    dtype=np.float32,
)
DOOR_COLOURS = np.array(
    [(0.30, 0.18, 0.10), (0.60, 0.10, 0.10), (0.10, 0.20, 0.45), (0.12, 0.35, 0.18),
     (0.08, 0.08, 0.08), (0.80, 0.80, 0.78)],
    dtype=np.float32,
)
LOT_COLOURS = np.array(
    [(0.30, 0.45, 0.20), (0.42, 0.40, 0.36), (0.50, 0.48, 0.44), (0.36, 0.50, 0.25)],
    dtype=np.float32,
)


@dataclass(frozen=True, eq=False)
class StreetSides:
    """Block edges along streets, where parked cars and people go.

    Attributes:
        start: (S, 2) a corner of a block's property line, metres.
        direction: (S, 2) unit vector along the edge; the street is on its right.
        length: (S,) edge length, metres.
    """

    start: np.ndarray
    direction: np.ndarray
    length: np.ndarray

    @property
    def outward(self) -> np.ndarray:
        """(S, 2) unit normals pointing from the block into the street."""
        return np.stack([self.direction[:, 1], -self.direction[:, 0]], axis=1)


@dataclass(frozen=True, eq=False)
class World:
    """The static town.

    Attributes:
        config: the settings it was built from.
        grid: street centre lines.
        route: the closed route the drives follow.
        route_blocks: blocks the route runs around, as (column, row) grid cells.
        walls: building walls.
        sprites: trees, street lamps and traffic signs.
        sides: block edges along streets.
        lot_colour: (C, R, 3) ground albedo inside each block.
        crossing: (C + 1, R + 1) 1 where a junction has zebra crossings.
        region_s: (M,) arc lengths (metres, every metre) where regions are labelled.
        region_label: (M,) 0 train, 1 val, 2 test, -1 gap at those arc lengths.
    """

    config: TownConfig
    grid: StreetGrid
    route: Route
    route_blocks: frozenset[tuple[int, int]]
    walls: Walls
    sprites: Sprites
    sides: StreetSides
    lot_colour: np.ndarray
    crossing: np.ndarray
    region_s: np.ndarray
    region_label: np.ndarray

    def region_at(self, s: np.ndarray) -> np.ndarray:
        """Region index (0 train, 1 val, 2 test, -1 gap) at route arc lengths ``s``."""
        s = np.mod(np.asarray(s, dtype=np.float64), self.route.length)
        step = self.region_s[1] - self.region_s[0]
        i = np.clip(np.round(s / step).astype(int), 0, len(self.region_s) - 1)
        return self.region_label[i]


def build_world(config: TownConfig) -> World:
    """Build the static town of ``config.seed``.

    Raises:
        ValueError: the route is too short for train, val and test regions once the gaps
            between them are cut out (names ``route_length``).
    """
    rng = np.random.default_rng([config.seed, 0])
    grid, route, cells = build_route(rng, config.route_length, config.block_size)
    route, region_s, region_label = _place_regions(route, config)
    counts = [int((region_label == k).sum()) for k in range(3)]
    if min(counts) < 10:
        raise ValueError(
            f"TownConfig.route_length: {config.route_length:g} m leaves regions of "
            f"{counts} metres (train, val, test) after the {config.region_gap:g} m gaps on "
            f"this town (seed {config.seed}); use a longer route or a smaller region_gap"
        )
    sides = _street_sides(grid)
    wall_rows, gap_trees = _buildings(rng, sides)
    sprites = Sprites.concat(
        [_trees(rng, sides, gap_trees), _lamps(rng, sides), _signs(rng, sides)]
    )
    cols, rows = grid.shape
    return World(
        config=config,
        grid=grid,
        route=route,
        route_blocks=frozenset(cells),
        walls=Walls.from_rows(wall_rows),
        sprites=sprites,
        sides=sides,
        lot_colour=LOT_COLOURS[rng.integers(len(LOT_COLOURS), size=(cols, rows))],
        crossing=(rng.random((cols + 1, rows + 1)) < 0.4).astype(np.int8),
        region_s=region_s,
        region_label=region_label,
    )


def _place_regions(route: Route, config: TownConfig) -> tuple[Route, np.ndarray, np.ndarray]:
    """Regions along the route, which starts in the middle of its longest side.

    Where that leaves a region shorter than :data:`MIN_REGION_LENGTH` (the gaps cut more at
    corners), the start moves to the middle of another side if that does better.
    """

    def labels(candidate: Route) -> tuple[Route, np.ndarray, np.ndarray, int]:
        s, label = region_labels(candidate, config.region_fractions, config.region_gap,
                                 margin=REGION_MARGIN)
        return candidate, s, label, min(int((label == k).sum()) for k in range(3))

    best = labels(route)
    if best[3] >= MIN_REGION_LENGTH:
        return best[:3]
    corners = route.corners
    sides = np.roll(corners, -1, axis=0) - corners
    for i in np.argsort(-np.hypot(sides[:, 0], sides[:, 1]), kind="stable"):
        middle = corners[i] + 0.5 * sides[i]
        nearest = int(np.argmin(np.hypot(route.x - middle[0], route.y - middle[1])))
        candidate = labels(start_route(route, float(route.s[nearest])))
        if candidate[3] > best[3]:
            best = candidate
    return best[:3]


def _street_sides(grid: StreetGrid) -> StreetSides:
    """The four property-line edges of every block, counter-clockwise around the block."""
    inset = ROAD_HALF + SIDEWALK
    starts, directions, lengths = [], [], []
    cols, rows = grid.shape
    for i in range(cols):
        for j in range(rows):
            x0, x1 = grid.xs[i] + inset, grid.xs[i + 1] - inset
            y0, y1 = grid.ys[j] + inset, grid.ys[j + 1] - inset
            corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
            for k in range(4):
                a = np.asarray(corners[k])
                b = np.asarray(corners[(k + 1) % 4])
                length = float(np.linalg.norm(b - a))
                starts.append(a)
                directions.append((b - a) / length)
                lengths.append(length)
    return StreetSides(
        start=np.asarray(starts), direction=np.asarray(directions), length=np.asarray(lengths)
    )


def _building_style(rng: np.random.Generator, owner: int) -> dict:
    """Texture parameters shared by all walls of one building."""
    floor_h = float(rng.uniform(2.8, 3.6))
    shop = bool(rng.random() < 0.45)
    ground_h = floor_h * float(rng.uniform(1.15, 1.45) if shop else 1.0)
    floors = int(rng.choice([1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 7]))
    height = ground_h + floor_h * (floors - 1) + float(rng.uniform(0.3, 1.5))
    modern = rng.random() < 0.15
    tint = rng.uniform(-0.06, 0.06, size=3)
    base = np.clip(WALL_COLOURS[rng.integers(len(WALL_COLOURS))] + tint, 0.05, 0.95)
    glass_level = rng.uniform(0.10, 0.30)
    glass = np.clip(np.array([glass_level, glass_level * 1.08, glass_level * 1.2])
                    + rng.uniform(-0.03, 0.03, size=3), 0.02, 0.6)
    return dict(
        owner=owner,
        height=height,
        base=tuple(base),
        trim=tuple(TRIM_COLOURS[rng.integers(len(TRIM_COLOURS))]),
        glass=tuple(glass),
        door_colour=tuple(DOOR_COLOURS[rng.integers(len(DOOR_COLOURS))]),
        floor_h=floor_h,
        ground_h=ground_h,
        bay=float(rng.uniform(1.6, 2.4) if modern else rng.uniform(2.2, 4.2)),
        bay_offset=float(rng.uniform(0.6, 2.0)),
        win_w=float(rng.uniform(0.8, 0.92) if modern else rng.uniform(0.35, 0.65)),
        win_h=float(rng.uniform(0.6, 0.72) if modern else rng.uniform(0.40, 0.60)),
        window_keep=float(rng.choice([1.0, 1.0, 0.9, 0.75])),
        ledges=int(rng.random() < 0.5),
        pilasters=int(rng.random() < 0.3),
        shop=int(shop),
    )


def _front_details(rng: np.random.Generator, style: dict, width: float) -> dict:
    """Door and shop-sign placement on a facade ``width`` metres long."""
    door_w = float(rng.uniform(1.0, 2.4))
    details = dict(
        door_u=float(rng.uniform(door_w, max(door_w + 0.1, width - door_w))),
        door_w=door_w if rng.random() < 0.9 else 0.0,
        door_h=float(rng.uniform(2.1, 2.6)),
    )
    if style["shop"]:
        u0 = float(rng.uniform(0.3, 0.35 * width))
        u1 = float(rng.uniform(max(u0 + 2.0, 0.6 * width), width - 0.3)) if width > 3 else width
        z1 = style["ground_h"] - float(rng.uniform(0.1, 0.3))
        colours = rng.choice(len(SIGN_COLOURS), size=2, replace=False)
        details.update(
            sign_u0=u0,
            sign_u1=u1,
            sign_z0=z1 - float(rng.uniform(0.6, 1.0)),
            sign_z1=z1,
            sign_a=tuple(SIGN_COLOURS[colours[0]]),
            sign_b=tuple(SIGN_COLOURS[colours[1]]),
            sign_panels=int(rng.choice([1, 1, 2, 3, 4, 6])),
        )
    return details


def _buildings(
    rng: np.random.Generator, sides: StreetSides
) -> tuple[list[dict], list[np.ndarray]]:
    """Wall rows of the buildings along every block edge, and points in the gaps for trees.

    Each edge starts with a square corner building (whose side on the cross street is a
    facade too), then buildings of random width, set-back and depth follow, sometimes with
    gaps between them.
    """
    rows: list[dict] = []
    gap_points: list[np.ndarray] = []
    owner = 0
    # Sides come four per block, counter-clockwise; each ends where the next one's corner
    # building begins.
    corner_sizes = rng.uniform(9.0, 15.0, size=len(sides.length))
    for k, (start, e, length) in enumerate(
        zip(sides.start, sides.direction, sides.length, strict=True)
    ):
        n = np.array([e[1], -e[0]])  # outward, towards the street
        corner = float(corner_sizes[k])
        end_limit = length - float(corner_sizes[4 * (k // 4) + (k + 1) % 4])
        position = 0.0
        first = True
        while position < length - 4.0:
            if first:
                width, setback = corner, 0.0
                depth = corner
            else:
                width = float(rng.uniform(6.0, 24.0))
                setback = float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.5, 4.0)]))
                depth = float(rng.uniform(8.0, 15.0))
            width = min(width, end_limit - position)
            if width < 4.0:
                break
            style = _building_style(rng, owner)
            front0 = start + e * position - n * setback
            front1 = front0 + e * width
            corners = np.array([front0, front1, front1 - n * depth, front0 - n * depth])
            kinds = (FACADE, PLAIN, PLAIN, FACADE if first else PLAIN)
            walls = box_walls(corners, kinds, **style)
            walls[0].update(_front_details(rng, style, width))
            if first:
                walls[3].update(_front_details(rng, style, depth))
            rows.extend(walls)
            owner += 1
            position += width
            first = False
            if rng.random() < 0.3:
                gap = float(rng.uniform(3.0, 12.0))
                if gap > 5.0 and rng.random() < 0.6:
                    gap_points.append(start + e * (position + gap / 2) - n * rng.uniform(1.0, 4.0))
                position += gap
    return rows, gap_points


def _trees(
    rng: np.random.Generator, sides: StreetSides, gap_points: list[np.ndarray]
) -> Sprites:
    """Tree-lined edges (some, with even spacing) and single trees in gaps between houses."""
    rows = []
    for start, e, length in zip(sides.start, sides.direction, sides.length, strict=True):
        if rng.random() > 0.35:
            continue
        n = np.array([e[1], -e[0]])
        spacing = float(rng.uniform(7.0, 13.0))
        radius = float(rng.uniform(1.6, 3.0))
        green = np.array([0.22, 0.40, 0.15]) + rng.uniform(-0.06, 0.06, size=3)
        for along in np.arange(12.0, length - 10.0, spacing):
            p = start + e * (along + rng.uniform(-0.5, 0.5)) + n * (SIDEWALK - 1.3)
            rows.append(_tree_row(rng, p, radius * rng.uniform(0.85, 1.15), green))
    for p in gap_points:
        green = np.array([0.20, 0.38, 0.14]) + rng.uniform(-0.06, 0.06, size=3)
        rows.append(_tree_row(rng, p, float(rng.uniform(2.0, 3.5)), green))
    for k, row in enumerate(rows):
        row["key"] = k
    return Sprites.from_rows(rows)


def _tree_row(rng: np.random.Generator, p: np.ndarray, radius: float, green: np.ndarray) -> dict:
    return dict(
        x=float(p[0]), y=float(p[1]), kind=TREE, width=0.3, size=radius,
        top=float(rng.uniform(2.2, 3.2) + 2 * radius),
        colour_a=tuple(np.clip(green, 0.02, 1.0)), colour_b=(0.30, 0.22, 0.15),
    )


def _lamps(rng: np.random.Generator, sides: StreetSides) -> Sprites:
    """Street lamps along one side of each block edge (every other edge), evenly spaced."""
    rows = []
    for k, (start, e, length) in enumerate(
        zip(sides.start, sides.direction, sides.length, strict=True)
    ):
        if k % 2 and rng.random() < 0.7:
            continue
        n = np.array([e[1], -e[0]])
        spacing = float(rng.uniform(24.0, 36.0))
        sodium = rng.random() < 0.5
        light = (1.0, 0.72, 0.38) if sodium else (0.92, 0.95, 1.0)
        height = float(rng.uniform(6.0, 8.0))
        for along in np.arange(float(rng.uniform(4.0, 12.0)), length - 3.0, spacing):
            p = start + e * along + n * (SIDEWALK - 0.4)
            rows.append(dict(x=float(p[0]), y=float(p[1]), kind=LAMP, width=0.16, top=height,
                             size=0.5, colour_a=(0.25, 0.26, 0.27), colour_b=light,
                             key=len(rows)))
    return Sprites.from_rows(rows)


def _signs(rng: np.random.Generator, sides: StreetSides) -> Sprites:
    """Traffic signs, about one per 70 m of block edge."""
    plates = [((0.85, 0.1, 0.1), (0.95, 0.95, 0.95)), ((0.1, 0.3, 0.8), (0.95, 0.95, 0.95)),
              ((0.95, 0.85, 0.1), (0.1, 0.1, 0.1)), ((0.95, 0.95, 0.95), (0.85, 0.1, 0.1))]
    rows = []
    for start, e, length in zip(sides.start, sides.direction, sides.length, strict=True):
        n = np.array([e[1], -e[0]])
        for _ in range(int(rng.poisson(length / 70.0))):
            p = start + e * rng.uniform(3.0, length - 3.0) + n * (SIDEWALK - 0.5)
            a, b = plates[int(rng.integers(len(plates)))]
            rows.append(dict(x=float(p[0]), y=float(p[1]), kind=SIGN, width=0.08,
                             top=float(rng.uniform(2.4, 3.0)), size=float(rng.uniform(0.5, 0.8)),
                             colour_a=a, colour_b=b, key=len(rows)))
    return Sprites.from_rows(rows)
