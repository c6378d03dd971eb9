"""Procedural textures: what a wall, car or piece of ground looks like at a given point.

Each function takes flat arrays of surface points (metres) and returns their albedo (RGB 0-1)
and a material code; the lighting of a condition is applied later (:mod:`.conditions`) and
may depend on the material (lit windows at night, snow on ledges, ...).
"""

from __future__ import annotations

import numpy as np

from softloc.data.synthetic.route import StreetGrid
from softloc.data.synthetic.walls import (
    BUMPER,
    CAR,
    CAR_GLASS_SLOT,
    DOOR_SLOT,
    FACADE,
    GLASS,
    PALETTE_SLOTS,
    PLINTH,
    SHOP_GLASS_SLOT,
    SIGN_A,
    SIGN_B,
    TAIL_LIGHT,
    TRIM,
    TYRE,
    Walls,
)

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
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


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
        albedo (P, 3) float32, material (P,) int8, window key (P,) float32 in [0, 1) that
        identifies the window, shop front or sign a point belongs to (0 elsewhere).
    """
    slot = np.zeros(len(index), dtype=np.int64)
    material = np.full(len(index), WALL, dtype=np.int8)
    key = np.zeros(len(index), dtype=np.float32)
    shade = np.ones(len(index), dtype=np.float32)
    car = walls.kind[index] == CAR
    if car.all():
        _car_texture(walls, index, u, z, slot, material)
    elif car.any():
        c = np.flatnonzero(car)
        h = np.flatnonzero(~car)
        slot_c, material_c = slot[c], material[c]
        _car_texture(walls, index[c], u[c], z[c], slot_c, material_c)
        slot_h, material_h, key_h, shade_h = slot[h], material[h], key[h], shade[h]
        _house_texture(walls, index[h], u[h], z[h], slot_h, material_h, key_h, shade_h)
        slot[c], material[c] = slot_c, material_c
        slot[h], material[h], key[h], shade[h] = slot_h, material_h, key_h, shade_h
    else:
        _house_texture(walls, index, u, z, slot, material, key, shade)
    albedo = walls.palette[index * PALETTE_SLOTS + slot]
    albedo *= shade[:, None]
    return albedo, material, key


def _house_texture(
    walls: Walls,
    w: np.ndarray,
    u: np.ndarray,
    z: np.ndarray,
    slot: np.ndarray,
    material: np.ndarray,
    key: np.ndarray,
    shade: np.ndarray,
) -> None:
    """Fill palette slot, material, window key and shade of points on building walls."""
    front = walls.kind[w] == FACADE
    height = walls.height[w]
    bay = walls.bay[w]
    # Window grid: bays centred along the wall, storeys above the ground floor of shops
    # (from the ground elsewhere).
    length = walls.length[w]
    n_bays = np.maximum(np.floor((length - 2 * walls.bay_offset[w]) / bay), 1)
    bay_f = (u - (length - n_bays * bay) / 2) / bay
    bay_i = np.floor(bay_f)
    fu = np.abs(bay_f - bay_i - 0.5)  # 0 at the bay centre, 0.5 at its edges
    shop = (walls.shop[w] == 1) & front
    z0 = np.where(shop, walls.ground_h[w], 0.0)
    storey_f = (z - z0) / walls.floor_h[w]
    storey_i = np.floor(storey_f)
    fz = storey_f - storey_i
    below_roof = z < height - 0.9
    in_grid = (bay_i >= 0) & (bay_i < n_bays) & (z >= z0) & below_roof
    # One random number per window place: whether it holds a window, its shade, its key.
    owner = walls.owner[w]
    window_rand = hash_unit(owner, bay_i, storey_i)
    keep = in_grid & (window_rand < np.where(front, walls.window_keep[w], 0.35))
    half_w = walls.win_w[w] * 0.5
    window = keep & (fu < half_w) & (fz > 0.28) & (fz < 0.28 + walls.win_h[w])
    sill = keep & (fu < half_w + 0.06) & (fz > 0.21) & (fz <= 0.28)
    course = (walls.ledges[w] == 1) & (fz < 0.06) & (z > z0 + 0.5) & below_roof
    pillar = (walls.pilasters[w] == 1) & front & in_grid & (fu > 0.43)
    ledge = sill | course | (z > height - 0.45)  # sills, string courses, cornice

    slot[z < 0.45] = PLINTH
    slot[pillar | ledge] = TRIM
    material[ledge] = LEDGE
    slot[window] = GLASS
    material[window] = WINDOW
    key[window] = window_rand[window]
    shade[window] = 0.75 + 0.5 * ((window_rand[window] * 977.0) % 1.0)

    s = np.flatnonzero(shop & (z < z0))
    if len(s):
        _shop_front(walls, w[s], u[s], z[s], s, slot, material, key)
    door_w = walls.door_w[w]
    door = front & (door_w > 0) & (np.abs(u - walls.door_u[w]) < door_w / 2) & (
        z < walls.door_h[w]
    )
    slot[door] = DOOR_SLOT
    material[door] = DOOR


def _shop_front(
    walls: Walls,
    w: np.ndarray,
    u: np.ndarray,
    z: np.ndarray,
    at: np.ndarray,
    slot: np.ndarray,
    material: np.ndarray,
    key: np.ndarray,
) -> None:
    """Ground floor of shops (points ``at`` of the output arrays): glass front and a sign.

    The sign has coloured panels with a band of "lettering" in the other colour.
    """
    u0, u1 = walls.sign_u0[w], walls.sign_u1[w]
    z0, z1 = walls.sign_z0[w], walls.sign_z1[w]
    across = (u >= u0) & (u <= u1)
    sign = across & (z >= z0) & (z <= z1)
    panel = np.floor((u - u0) / np.maximum(u1 - u0, 0.1) * walls.sign_panels[w])
    even = (panel % 2) == 0
    owner = walls.owner[w]
    letters = (np.abs((z - z0) / np.maximum(z1 - z0, 0.1) - 0.5) < 0.18) & (
        hash_unit(owner, np.floor(u * 2.5), 5) < 0.6
    )
    first = even != letters
    slot[at[sign]] = np.where(first[sign], SIGN_A, SIGN_B)
    material[at[sign]] = SIGN
    key[at[sign]] = hash_unit(owner[sign], 41)
    glass = across & (z > 0.5) & (z < z0 - 0.25) & (np.abs(((u - u0) % 3.0) - 1.5) < 1.38)
    slot[at[glass]] = SHOP_GLASS_SLOT
    material[at[glass]] = SHOP_GLASS
    key[at[glass]] = hash_unit(owner[glass], np.floor(u[glass] / 3.0), 99)


def _car_texture(
    walls: Walls, w: np.ndarray, u: np.ndarray, z: np.ndarray, slot: np.ndarray,
    material: np.ndarray,
) -> None:
    """Fill palette slot and material of points on parked cars."""
    length = walls.length[w]
    height = walls.height[w]
    material[:] = CAR_BODY
    side = length > 2.5
    slot[z < 0.25] = BUMPER
    lights = ~side & (z > 0.55) & (z < 0.75) & ((u < 0.35) | (u > length - 0.35))
    slot[lights] = TAIL_LIGHT
    glass_low = np.where(height > 1.7, height * 0.55, height * 0.62)
    glass = (z > glass_low) & (z < height - 0.1) & (u > 0.35) & (u < length - 0.35)
    glass &= ~(side & (np.abs(u - length * 0.5) < 0.09))  # the pillar between the doors
    slot[glass] = CAR_GLASS_SLOT
    material[glass] = CAR_GLASS
    wheel_u = np.minimum(np.abs(u - 0.85), np.abs(u - (length - 0.85)))
    wheel = side & (((wheel_u / 0.34) ** 2 + ((z - 0.32) / 0.32) ** 2) < 1.0)
    slot[wheel] = TYRE
    material[wheel] = WHEEL
    material[z > height - 0.1] = CAR_ROOF


#: Ground colours after the per-block lot colours: sidewalk, curb, asphalt, road paint.
_GROUND_COLOURS = np.array(
    [(0.58, 0.57, 0.545), (0.72, 0.72, 0.72), (0.32, 0.32, 0.333), (0.82, 0.82, 0.82)],
    dtype=np.float32,
)
_GROUND_MATERIALS = np.array([SIDEWALK, CURB, ROAD, MARKING], dtype=np.int8)


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
    dx, ix = _nearest_line(grid.xs.astype(x.dtype), x)
    dy, iy = _nearest_line(grid.ys.astype(y.dtype), y)
    ax, ay = np.abs(dx), np.abs(dy)
    along_v = ax <= ay  # nearer to a street along y than to one along x
    dist = np.minimum(ax, ay)  # from the nearest street's centre line
    other = np.maximum(ax, ay)  # from the cross street's centre line
    signed = np.where(along_v, dx, dy)
    along = np.where(along_v, y, x)

    cols, rows = lot_colour.shape[:2]
    lots = cols * rows
    block_i = np.clip(ix - (dx < 0), 0, cols - 1)
    block_j = np.clip(iy - (dy < 0), 0, rows - 1)
    slot = block_i * rows + block_j
    road = dist < road_half
    walk = ~road & (dist < road_half + sidewalk)
    slot[walk] = lots
    slot[walk & (dist < road_half + 0.25)] = lots + 1
    slot[road] = lots + 2
    straight = road & (other > road_half + 1.0)  # not in or next to a junction
    centre_dash = (dist < 0.09) & ((along % 9.0) < 4.5)
    lane_edge = np.abs(dist - 3.6) < 0.07
    node = crossing[ix, iy]
    zebra = (node == 1) & (other < road_half + 4.0) & ((dist % 1.2) < 0.6) & (
        dist < road_half - 0.3
    )
    slot[straight & (centre_dash | lane_edge | zebra)] = lots + 3

    palette = np.concatenate([lot_colour.reshape(-1, 3), _GROUND_COLOURS])
    grain = hash_unit(np.floor(x * 1.5), np.floor(y * 1.5), 17).astype(np.float32)
    shade = 0.92 + 0.16 * grain
    joint = walk & (
        (np.abs(((along + 0.6) % 1.2) - 0.6) < 0.05)
        | (np.abs(((dist - road_half) % 1.5) - 0.75) > 0.72)
    )
    shade[joint] *= 0.85
    albedo = palette[slot] * shade[:, None]
    material = np.full(len(x), LOT, dtype=np.int8)
    paved = slot >= lots
    material[paved] = _GROUND_MATERIALS[slot[paved] - lots]
    return albedo, material, signed


def _nearest_line(lines: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed offset of ``p`` from the nearest of the sorted ``lines``, and that line's index."""
    i = np.clip(np.searchsorted(lines, p), 1, len(lines) - 1)
    lo, hi = lines[i - 1], lines[i]
    use_lo = (p - lo) < (hi - p)
    index = np.where(use_lo, i - 1, i)
    return p - lines[index], index
