"""What one drive sees: the static town plus its own parked cars, people, bins and light.

A :class:`DriveScene` is built once per drive from the world, the condition and a drive seed;
every frame of the drive is rendered from it. Two scenes of the same world differ only in
transient objects and appearance, never in buildings, trees, lamps or signs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from softloc.data.synthetic.config import CONDITIONS
from softloc.data.synthetic.shadows import ShadowMap, shadow_map
from softloc.data.synthetic.sprites import BIN, PERSON, TREE, Sprites
from softloc.data.synthetic.walls import CAR, Walls, box_walls
from softloc.data.synthetic.world import PARKING_LANE, ROAD_HALF, SIDEWALK, World

CAR_COLOURS = np.array(
    [(0.88, 0.88, 0.88), (0.08, 0.08, 0.09), (0.62, 0.63, 0.65), (0.38, 0.39, 0.41),
     (0.70, 0.10, 0.08), (0.10, 0.20, 0.55), (0.12, 0.30, 0.18), (0.85, 0.70, 0.15),
     (0.45, 0.30, 0.20), (0.55, 0.70, 0.85)],
    dtype=np.float32,
)
CLOTHES = np.array(
    [(0.10, 0.10, 0.12), (0.20, 0.25, 0.45), (0.55, 0.10, 0.10), (0.40, 0.40, 0.38),
     (0.75, 0.70, 0.55), (0.15, 0.35, 0.20), (0.85, 0.55, 0.15), (0.80, 0.80, 0.82)],
    dtype=np.float32,
)


@dataclass(frozen=True, eq=False)
class Appearance:
    """Per-drive light and camera settings.

    Attributes:
        exposure: global gain applied before clipping.
        white_balance: (3,) per-channel gain.
        sun_azimuth, sun_elevation: direction towards the sun, radians (sunny only).
        lit_windows: share of windows lit at night.
        lit_signs: share of shop signs lit at night.
        salt: integer mixed into per-drive random choices (which windows are lit).
        noise: standard deviation of the sensor noise (0-1 scale).
        clouds: (360, 32) cloud cover in [0, 1] by azimuth (degrees, counter-clockwise
            from +x) and elevation (0 to 40 degrees); None for a plain sky.
    """

    exposure: float
    white_balance: np.ndarray
    sun_azimuth: float = 0.0
    sun_elevation: float = 0.0
    lit_windows: float = 0.0
    lit_signs: float = 0.0
    salt: int = 0
    noise: float = 0.0
    clouds: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class DriveScene:
    """Everything one drive's frames are rendered from.

    Attributes:
        world: the static town.
        condition: one of :data:`~softloc.data.synthetic.config.CONDITIONS`.
        seed: the drive seed.
        walls: building walls followed by parked-car walls.
        sprites: static sprites followed by people and bins.
        appearance: light and camera settings of the drive.
        shadows: sun shadow map (``sunny`` only, else None).
    """

    world: World
    condition: str
    seed: int
    walls: Walls
    sprites: Sprites
    appearance: Appearance
    shadows: ShadowMap | None = None


def make_drive_scene(
    world: World, condition: str, drive_seed: int, transients: bool = True
) -> DriveScene:
    """The scene of one drive: parked cars, people and light drawn from ``drive_seed``.

    Args:
        world: the static town.
        condition: ``overcast``, ``sunny``, ``night`` or ``snow``.
        drive_seed: seeds the transient objects and the appearance.
        transients: False leaves out parked cars, people and bins (for tests and pictures).

    Raises:
        ValueError: unknown condition.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    rng = np.random.default_rng([int(drive_seed), 1])
    cars = _parked_cars(rng, world) if transients else _empty_like(world.walls)
    people = _people_and_bins(rng, world) if transients else Sprites.empty()
    walls = Walls.concat([world.walls, cars])
    sprites = Sprites.concat([world.sprites, people])
    appearance = _appearance(np.random.default_rng([int(drive_seed), 2]), condition)
    shadows = None
    if condition == "sunny":
        shadows = _sun_shadows(world, walls, sprites, appearance)
    return DriveScene(
        world=world,
        condition=condition,
        seed=int(drive_seed),
        walls=walls,
        sprites=sprites,
        appearance=appearance,
        shadows=shadows,
    )


def _appearance(rng: np.random.Generator, condition: str) -> Appearance:
    exposure = float(rng.uniform(0.85, 1.18))
    white_balance = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    salt = int(rng.integers(1, 2**31 - 1))
    if condition == "sunny":
        quadrant = int(rng.integers(4))
        return Appearance(
            exposure=exposure,
            white_balance=white_balance,
            sun_azimuth=float(np.pi / 4 + quadrant * np.pi / 2 + rng.uniform(-0.45, 0.45)),
            sun_elevation=float(np.radians(rng.uniform(35.0, 55.0))),
            salt=salt,
            noise=0.01,
            clouds=cloud_map(rng, cover=float(rng.uniform(0.25, 0.6))),
        )
    if condition == "night":
        return Appearance(
            exposure=float(rng.uniform(0.9, 1.5)),
            white_balance=white_balance,
            lit_windows=float(rng.uniform(0.2, 0.45)),
            lit_signs=float(rng.uniform(0.4, 0.9)),
            salt=salt,
            noise=float(rng.uniform(0.04, 0.06)),
        )
    return Appearance(exposure=exposure, white_balance=white_balance, salt=salt, noise=0.01)


def cloud_map(rng: np.random.Generator, cover: float) -> np.ndarray:
    """Fair-weather clouds: (360, 32) cover in [0, 1] over azimuth and elevation.

    Two octaves of value noise (periodic in azimuth), thresholded so that about ``cover`` of
    the sky is cloud, with soft edges.
    """
    noise = np.zeros((360, 32), dtype=np.float64)
    for cells, weight in ((18, 1.0), (60, 0.45)):
        knots = rng.random((cells, 5))
        a = np.arange(360) * cells / 360.0
        i = np.floor(a).astype(int)
        fa = (a - i)[:, None]
        e = np.linspace(0.0, 3.999, 32)
        j = np.floor(e).astype(int)
        fe = (e - j)[None, :]
        i1 = (i + 1) % cells
        lower = knots[i][:, j] * (1 - fe) + knots[i][:, j + 1] * fe
        upper = knots[i1][:, j] * (1 - fe) + knots[i1][:, j + 1] * fe
        noise += weight * (lower * (1 - fa) + upper * fa)
    level = np.quantile(noise, 1.0 - cover)
    return np.clip((noise - level) / 0.12, 0.0, 1.0).astype(np.float32)


def _empty_like(walls: Walls) -> Walls:
    return Walls(**{f.name: getattr(walls, f.name)[:0] for f in fields(Walls) if f.init})


def _parked_cars(rng: np.random.Generator, world: World) -> Walls:
    """Cars parked along the curbs of every block edge, a random share of the slots taken."""
    rows: list[dict] = []
    offset = SIDEWALK + (ROAD_HALF - PARKING_LANE)  # parking lane centre from property line
    sides = world.sides
    owner = 1_000_000
    for start, e, length in zip(sides.start, sides.direction, sides.length, strict=True):
        n = np.array([e[1], -e[0]])
        occupancy = float(rng.uniform(0.15, 0.8))
        along = float(rng.uniform(3.0, 6.0))
        while True:
            van = rng.random() < 0.12
            car_len = float(rng.uniform(5.0, 5.6) if van else rng.uniform(3.8, 4.8))
            if along + car_len > length - 3.0:
                break
            if rng.random() < occupancy:
                width = float(rng.uniform(1.7, 1.95))
                height = float(rng.uniform(1.9, 2.3) if van else rng.uniform(1.35, 1.48))
                side_shift = float(rng.uniform(-0.15, 0.15))
                p0 = start + e * along + n * (offset + side_shift - width / 2)
                corners = np.array([p0, p0 + e * car_len, p0 + e * car_len + n * width,
                                    p0 + n * width])
                colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
                rows.extend(box_walls(corners, (CAR, CAR, CAR, CAR), owner=owner, height=height,
                                      base=tuple(colour)))
                owner += 1
            along += car_len + float(rng.uniform(0.6, 2.5))
    if not rows:
        return _empty_like(world.walls)
    return Walls.from_rows(rows)


def _people_and_bins(rng: np.random.Generator, world: World) -> Sprites:
    """Pedestrians on the sidewalks and wheelie bins by the curb."""
    rows = []
    sides = world.sides
    for start, e, length in zip(sides.start, sides.direction, sides.length, strict=True):
        n = np.array([e[1], -e[0]])
        for _ in range(int(rng.poisson(length / 28.0))):
            p = start + e * rng.uniform(1.0, length - 1.0) + n * rng.uniform(0.4, SIDEWALK - 0.3)
            coat, legs = rng.choice(len(CLOTHES), size=2)
            rows.append(dict(x=float(p[0]), y=float(p[1]), kind=PERSON, width=0.5,
                             top=float(rng.uniform(1.55, 1.9)), colour_a=tuple(CLOTHES[coat]),
                             colour_b=tuple(CLOTHES[legs]), key=len(rows)))
        for _ in range(int(rng.poisson(length / 70.0))):
            p = start + e * rng.uniform(1.0, length - 1.0) + n * (SIDEWALK - 0.5)
            colour = ((0.1, 0.3, 0.12), (0.15, 0.15, 0.16), (0.2, 0.3, 0.6))[int(rng.integers(3))]
            rows.append(dict(x=float(p[0]), y=float(p[1]), kind=BIN, width=0.6, top=1.05,
                             colour_a=colour, key=len(rows)))
    return Sprites.from_rows(rows)


def wall_boxes(walls: Walls) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding boxes (B, 4) and heights (B,) of walls grouped four per box."""
    n = len(walls) // 4
    xs = np.stack([walls.ax, walls.bx], axis=1)[: 4 * n].reshape(n, 8)
    ys = np.stack([walls.ay, walls.by], axis=1)[: 4 * n].reshape(n, 8)
    boxes = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
    return boxes, walls.height[: 4 * n : 4].astype(np.float32)


def _sun_shadows(
    world: World, walls: Walls, sprites: Sprites, appearance: Appearance
) -> ShadowMap:
    """Shadow map of buildings, parked cars and tree crowns for the drive's sun."""
    boxes, heights = wall_boxes(walls)
    trees = sprites.kind == TREE
    if trees.any():
        # A crown between heights z0 and z1 shades the ground between z0 / tan(e) and
        # z1 / tan(e) away from the sun: a box of height z1 - z0 moved by z0 / tan(e).
        radius = sprites.size[trees].astype(np.float64)
        z1 = sprites.top[trees].astype(np.float64)
        z0 = z1 - 2 * radius
        shift = z0 / np.tan(appearance.sun_elevation)
        cx = sprites.x[trees] - shift * np.cos(appearance.sun_azimuth)
        cy = sprites.y[trees] - shift * np.sin(appearance.sun_azimuth)
        r = 0.8 * radius
        crowns = np.stack([cx - r, cy - r, cx + r, cy + r], axis=1)
        boxes = np.concatenate([boxes, crowns])
        heights = np.concatenate([heights, (z1 - z0).astype(np.float32)])
    grid = world.grid
    extent = (float(grid.xs[0]), float(grid.ys[0]), float(grid.xs[-1]), float(grid.ys[-1]))
    return shadow_map(boxes, heights, extent, appearance.sun_azimuth, appearance.sun_elevation)
