"""Procedural textures: what a wall, car or piece of ground looks like at a given point.

Each function takes flat arrays of surface points (metres) and returns their albedo (RGB 0-1)
and a material code; the lighting of a condition is applied later (:mod:`.conditions`) and
may depend on the material (lit windows at night, snow on ledges, ...).
"""

from __future__ import annotations

import numpy as np

from softloc.data.synthetic.route import StreetGrid
from softloc.data.synthetic.walls import CAR, FACADE, Walls

# Material codes.
SKY = 0
WALL = 1
WINDOW = 2
LEDGE = 3  # sills, string courses, cornices: where snow settles
SIGN = 4
DOOR = 5
SHOP_GLASS = 6
CAR_BODY = 7
CAR_GLASS = 8
WHEEL = 9
CAR_ROOF = 10
ROAD = 20
MARKING = 21
SIDEWALK = 22
CURB = 23
LOT = 24
FOLIAGE = 30
TRUNK = 31
POLE = 32
LAMP_HEAD = 33
PERSON = 34
PLATE = 35
BIN = 36

#: Materials of surfaces of buildings and cars (used to pick shading rules).
GLASS_MATERIALS = (WINDOW, SHOP_GLASS, CAR_GLASS)
GROUND_MATERIALS = (ROAD, MARKING, SIDEWALK, CURB, LOT)


def hash_unit(*keys: np.ndarray) -> np.ndarray:
    """A repeatable pseudo-random number in [0, 1) for each combination of integer keys."""
    h = np.full(np.broadcast(*keys).shape, 0x811C9DC5, dtype=np.uint32)
    for k in keys:
        h ^= np.asarray(k).astype(np.int64).astype(np.uint32)
        h *= np.uint32(0x01000193)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def wall_texture(
    walls: Walls, index: np.ndarray, u: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo of wall points.

    Args:
        walls: all walls of the scene.
        index: (P,) wall of each point.
        u: (P,) distance from the wall's start point along the wall, metres.
        z: (P,) height above the ground, metres.

    Returns:
        albedo (P, 3) float32, material (P,) int8, window key (P,) float64 in [0, 1) that
        identifies the window a point belongs to (0 elsewhere).
    """
    albedo = walls.base[index].copy()
    material = np.full(len(index), WALL, dtype=np.int8)
    key = np.zeros(len(index), dtype=np.float64)
    car = walls.kind[index] == CAR
    if car.any():
        _car_texture(walls, index[car], u[car], z[car], albedo, material, car)
    house = ~car
    if house.any():
        _house_texture(walls, index[house], u[house], z[house], albedo, material, key, house)
    return albedo, material, key


def _house_texture(walls, idx, u, z, albedo, material, key, where) -> None:
    length = walls.length[idx]
    height = walls.height[idx]
    floor_h = walls.floor_h[idx]
    ground_h = walls.ground_h[idx]
    bay = walls.bay[idx]
    offset = walls.bay_offset[idx]
    front = walls.kind[idx] == FACADE
    alb = albedo[where]
    mat = material[where]
    k = np.zeros(len(idx))

    # Window grid: bays along the wall, storeys above the ground floor (or from the ground
    # for houses without a shop).
    n_bays = np.maximum(np.floor((length - 2 * offset) / bay), 1)
    used = n_bays * bay
    start = (length - used) / 2
    bay_f = (u - start) / bay
    bay_i = np.floor(bay_f)
    fu = bay_f - bay_i
    shop = (walls.shop[idx] == 1) & front
    z0 = np.where(shop, ground_h, 0.0)
    storey_f = (z - z0) / floor_h
    storey_i = np.floor(storey_f)
    fz = storey_f - storey_i
    in_grid = (bay_i >= 0) & (bay_i < n_bays) & (z >= z0) & (z < height - 0.9)
    owner = walls.owner[idx]
    # One random number per window place: whether it holds a window, its shade, its key.
    window_rand = hash_unit(owner, bay_i, storey_i)
    keep = window_rand < np.where(front, walls.window_keep[idx], 0.35)
    half_w = walls.win_w[idx] / 2
    win_h = walls.win_h[idx]
    sill = 0.28
    window = in_grid & keep & (np.abs(fu - 0.5) < half_w) & (fz > sill) & (fz < sill + win_h)
    sill_band = (
        in_grid & keep & (np.abs(fu - 0.5) < half_w + 0.06) & (fz > sill - 0.07) & (fz <= sill)
    )
    string_course = (walls.ledges[idx] == 1) & (z > z0 + 0.5) & (fz < 0.06) & (z < height - 0.9)
    pillar = (walls.pilasters[idx] == 1) & front & in_grid & ((fu < 0.07) | (fu > 0.93))
    cornice = z > height - 0.45
    plinth = z < 0.45

    trim = walls.trim[idx]
    alb[plinth] *= 0.7
    alb[pillar | string_course] = trim[pillar | string_course]
    mat[string_course] = LEDGE
    glass = walls.glass[idx]
    shade = 0.75 + 0.5 * ((window_rand[window] * 977.0) % 1.0)
    alb[window] = glass[window] * shade[:, None].astype(np.float32)
    mat[window] = WINDOW
    k[window] = window_rand[window]
    alb[sill_band | cornice] = trim[sill_band | cornice]
    mat[sill_band | cornice] = LEDGE

    # Ground floor of shops: glass front, a sign with coloured panels above it.
    s = np.flatnonzero(shop & (z < ground_h))
    if len(s):
        si = idx[s]
        us, zs = u[s], z[s]
        su0, su1 = walls.sign_u0[si], walls.sign_u1[si]
        sz0, sz1 = walls.sign_z0[si], walls.sign_z1[si]
        across = (us >= su0) & (us <= su1)
        sign = across & (zs >= sz0) & (zs <= sz1)
        panel = np.floor((us - su0) / np.maximum(su1 - su0, 0.1) * walls.sign_panels[si])
        even = ((panel % 2) == 0)[:, None]
        # A band of "lettering" across the middle of each panel, in the other colour.
        band = (np.abs((zs - sz0) / np.maximum(sz1 - sz0, 0.1) - 0.5) < 0.18) & (
            hash_unit(owner[s], np.floor(us * 2.5), 5) < 0.6
        )
        first = np.where(even, walls.sign_a[si], walls.sign_b[si])
        second = np.where(even, walls.sign_b[si], walls.sign_a[si])
        sign_colour = np.where(band[:, None], second, first)
        alb[s[sign]] = sign_colour[sign]
        mat[s[sign]] = SIGN
        k[s[sign]] = hash_unit(owner[s[sign]], 41)
        shop_glass = across & (zs > 0.5) & (zs < sz0 - 0.25)
        shop_glass &= np.abs(((us - su0) % 3.0) - 1.5) < 1.38  # mullions every 3 m
        g = s[shop_glass]
        alb[g] = glass[g] * 1.1
        mat[g] = SHOP_GLASS
        k[g] = hash_unit(owner[g], np.floor(u[g] / 3.0), 99)

    door_w = walls.door_w[idx]
    door = front & (door_w > 0) & (np.abs(u - walls.door_u[idx]) < door_w / 2) & (
        z < walls.door_h[idx]
    )
    alb[door] = walls.door_colour[idx][door]
    mat[door] = DOOR
    albedo[where] = alb
    material[where] = mat
    key[where] = k


def _car_texture(walls, idx, u, z, albedo, material, where) -> None:
    length = walls.length[idx]
    height = walls.height[idx]
    alb = albedo[where]
    mat = np.full(len(idx), CAR_BODY, dtype=np.int8)
    side = length > 2.5
    glass_low = np.where(height > 1.7, height * 0.55, height * 0.62)
    glass = (z > glass_low) & (z < height - 0.1) & (u > 0.35) & (u < length - 0.35)
    pillar = side & (np.abs(u - length * 0.5) < 0.09)
    glass &= ~pillar
    alb[glass] = np.array([0.12, 0.14, 0.17], dtype=np.float32)
    mat[glass] = CAR_GLASS
    wheel_u = np.minimum(np.abs(u - 0.85), np.abs(u - (length - 0.85)))
    wheel = side & (((wheel_u / 0.34) ** 2 + ((z - 0.32) / 0.32) ** 2) < 1.0)
    alb[wheel] = np.array([0.06, 0.06, 0.06], dtype=np.float32)
    mat[wheel] = WHEEL
    lights = ~side & (z > 0.55) & (z < 0.75) & ((u < 0.35) | (u > length - 0.35))
    alb[lights] = np.array([0.75, 0.12, 0.08], dtype=np.float32)
    bumper = z < 0.25
    alb[bumper & ~wheel] *= 0.45
    roof = z > height - 0.1
    mat[roof] = CAR_ROOF
    albedo[where] = alb
    material[where] = mat


def ground_texture(
    grid: StreetGrid,
    lot_colour: np.ndarray,
    crossing: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    road_half: float,
    sidewalk: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo of ground points (x, y) (P,): roads, markings, sidewalks, curbs, block lots.

    Returns:
        albedo (P, 3) float32, material (P,) int8, and the signed distance (P,) of each point
        from the centre line of its street (metres; used for tyre tracks in snow).
    """
    dx, ix = _nearest_line(grid.xs, x)
    dy, iy = _nearest_line(grid.ys, y)
    ax, ay = np.abs(dx), np.abs(dy)
    on_v = ax < road_half
    on_h = ay < road_half
    road = on_v | on_h
    # Distance to the nearest street and the coordinate along it.
    along_v = ax <= ay
    dist = np.where(along_v, ax, ay)
    signed = np.where(along_v, dx, dy)
    along = np.where(along_v, y, x)
    other = np.where(along_v, ay, ax)  # distance to the cross street

    albedo = np.empty((len(x), 3), dtype=np.float32)
    material = np.full(len(x), LOT, dtype=np.int8)
    cols, rows = lot_colour.shape[:2]
    bi = np.clip(np.searchsorted(grid.xs, x) - 1, 0, cols - 1)
    bj = np.clip(np.searchsorted(grid.ys, y) - 1, 0, rows - 1)
    albedo[:] = lot_colour[bi, bj]

    grain = hash_unit(np.floor(x * 1.5), np.floor(y * 1.5), 17).astype(np.float32)
    walk = ~road & (np.minimum(ax, ay) < road_half + sidewalk)
    slab = 0.56 + 0.05 * grain
    joint = (np.abs(((along + 0.6) % 1.2) - 0.6) < 0.05) | (
        np.abs(((dist - road_half) % 1.5) - 0.75) > 0.72
    )
    albedo[walk] = (slab[walk] * np.where(joint[walk], 0.85, 1.0))[:, None] * np.array(
        [1.0, 0.98, 0.94], dtype=np.float32
    )
    material[walk] = SIDEWALK
    curb = walk & (np.minimum(ax, ay) < road_half + 0.25)
    albedo[curb] = 0.72
    material[curb] = CURB

    asphalt = 0.30 + 0.05 * grain
    albedo[road] = asphalt[road, None] * np.array([1.0, 1.0, 1.04], dtype=np.float32)
    material[road] = ROAD
    junction = on_v & on_h
    straight = road & ~junction & (other > road_half + 1.0)
    centre_dash = straight & (dist < 0.09) & ((along % 9.0) < 4.5)
    lane_edge = straight & (np.abs(dist - 3.6) < 0.07)
    # Zebra crossings just before some junctions.
    node = crossing[np.clip(ix, 0, crossing.shape[0] - 1), np.clip(iy, 0, crossing.shape[1] - 1)]
    zebra = (
        road & ~junction & (node == 1) & (other > road_half + 1.0) & (other < road_half + 4.0)
        & ((dist % 1.2) < 0.6) & (dist < road_half - 0.3)
    )
    paint = centre_dash | lane_edge | zebra
    albedo[paint] = 0.82
    material[paint] = MARKING
    return albedo, material, signed


def _nearest_line(lines: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed offset of ``p`` from the nearest of the sorted ``lines``, and that line's index."""
    i = np.clip(np.searchsorted(lines, p), 1, len(lines) - 1)
    lo, hi = lines[i - 1], lines[i]
    use_lo = (p - lo) < (hi - p)
    index = np.where(use_lo, i - 1, i)
    return p - lines[index], index
