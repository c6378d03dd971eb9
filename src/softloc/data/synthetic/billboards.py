"""Draw upright sprites (trees, lamps, signs, people, bins) into a G-buffer, all at once.

Each visible sprite covers a rectangle of pixels; all those pixels of all sprites are listed
together, each gets the metric coordinates (across, height) of its point on the sprite's
camera-facing plane, the sprite's shape decides which part (if any) covers it, and per pixel
the nearest covering sprite wins if it is nearer than what the G-buffer already holds.
"""

from __future__ import annotations

import math

import numpy as np

from softloc.data.synthetic import materials as M
from softloc.data.synthetic.camera import Camera, GBuffer, Pose
from softloc.data.synthetic.sprites import BIN, LAMP, PERSON, SIGN, TREE, Sprites

#: Sprites farther than this (metres) are not drawn.
SPRITE_DISTANCE = 90.0

_GREY = np.array([0.5, 0.5, 0.5], np.float32)
_LAMP_OFF = np.array([0.75, 0.75, 0.72], np.float32)
_SKIN = np.array([0.78, 0.62, 0.5], np.float32)


def draw_sprites(g: GBuffer, sprites: Sprites, pose: Pose, camera: Camera) -> None:
    """Draw ``sprites`` seen from ``pose`` into ``g`` (in place), with a depth test."""
    if len(sprites) == 0:
        return
    cos_y, sin_y = math.cos(pose.yaw), math.sin(pose.yaw)
    rx, ry = sprites.x - pose.x, sprites.y - pose.y
    depth = rx * cos_y + ry * sin_y
    lateral = rx * sin_y - ry * cos_y
    f = camera.focal
    spread = 0.5 * camera.width / f
    reach = np.maximum(sprites.size, sprites.width) + 0.5
    seen = (depth > 1.0) & (depth < SPRITE_DISTANCE) & (np.abs(lateral) < depth * spread + reach)
    seen &= sprites.top * f / np.maximum(depth, 1e-3) > 2.0  # at least two pixels tall
    ids = np.flatnonzero(seen)
    if len(ids) == 0:
        return
    depth, lateral = depth[ids], lateral[ids]
    kind = sprites.kind[ids]
    top = sprites.top[ids].astype(np.float64)
    size = sprites.size[ids].astype(np.float64)
    scale = f / depth  # pixels per metre
    width = np.maximum(sprites.width[ids], 0.6 / scale)
    h = camera.height_m
    centre = 0.5 * camera.width + lateral * scale
    half = np.where(np.isin(kind, (TREE, SIGN, LAMP)), np.maximum(width, size), 0.5 * width)
    half = np.maximum(half * scale, 0.5) + 0.5
    c0 = np.clip(np.floor(centre - half).astype(int), 0, camera.width)
    c1 = np.clip(np.ceil(centre + half).astype(int) + 1, 0, camera.width)
    r0 = np.clip(np.floor(0.5 * camera.height + (h - top) * scale).astype(int) - 1, 0,
                 camera.height)
    r1 = np.clip(np.ceil(0.5 * camera.height + h * scale).astype(int) + 1, 0, camera.height)
    cols_n = np.maximum(c1 - c0, 0)
    count = cols_n * np.maximum(r1 - r0, 0)
    total = int(count.sum())
    if total == 0:
        return
    # One entry per (sprite, pixel of its rectangle).
    sid = np.repeat(np.arange(len(ids)), count)
    local = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    row = r0[sid] + local // cols_n[sid]
    col = c0[sid] + local % cols_n[sid]
    s = scale[sid]
    across = (col + 0.5 - centre[sid]) / s
    z = h - (row + 0.5 - 0.5 * camera.height) / s
    colour, material, leaf = _parts(sprites, ids, sid, kind[sid], across, z, top[sid],
                                    size[sid], width[sid])
    pixel = row * camera.width + col
    entry_depth = depth[sid]
    covered = (material > 0) & (entry_depth < g.depth[pixel])
    if not covered.any():
        return
    entries = np.flatnonzero(covered)
    order = entries[np.lexsort((entry_depth[entries], pixel[entries]))]
    first = np.r_[True, pixel[order][1:] != pixel[order][:-1]]
    win = order[first]
    p = pixel[win]
    owner = ids[sid[win]]
    g.albedo[p] = colour[win]
    g.material[p] = material[win]
    g.depth[p] = entry_depth[win]
    g.x[p] = sprites.x[owner]
    g.y[p] = sprites.y[owner]
    g.z[p] = z[win]
    g.key[p] = leaf[win]
    g.nx[p] = -cos_y
    g.ny[p] = -sin_y
    heads = material[win] == M.LAMP_HEAD
    g.light[p[heads]] = sprites.colour_b[owner[heads]]


def _parts(
    sprites: Sprites,
    ids: np.ndarray,
    sid: np.ndarray,
    kind: np.ndarray,
    across: np.ndarray,
    z: np.ndarray,
    top: np.ndarray,
    size: np.ndarray,
    width: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo (E, 3), material (E,) and leaf pattern (E,) in [0, 1) of each entry.

    Material is 0 where no part covers an entry; the leaf pattern is 0 off tree crowns.

    ``across`` and ``z`` (E,) are metric coordinates on the sprite's plane; parts listed
    later are drawn over earlier ones.
    """
    n = len(sid)
    colour = np.zeros((n, 3), dtype=np.float32)
    material = np.zeros(n, dtype=np.int8)
    leaf = np.zeros(n, dtype=np.float32)
    a = sprites.colour_a[ids][sid]
    b = sprites.colour_b[ids][sid]
    body = (np.abs(across) <= width / 2) & (z >= 0)

    def paint(mask: np.ndarray, albedo: np.ndarray, code: int) -> None:
        colour[mask] = albedo if albedo.ndim == 1 else albedo[mask]
        material[mask] = code

    tree = kind == TREE
    if tree.any():
        crown_z = top - size
        paint(tree & body & (z < crown_z), b, M.TRUNK)
        radius = np.maximum(size, 1e-3)
        crown = tree & ((across / radius) ** 2 + ((z - crown_z) / (0.9 * radius)) ** 2 <= 1.0)
        # Leaf blotches fixed to the tree in metres, so the crown looks the same every view.
        key = sprites.key[ids][sid]
        blotch = M.hash_unit(key, np.floor(across * 2.2 + 50), np.floor(z * 2.2), 31)
        paint(crown, a * (0.65 + 0.7 * blotch[:, None]).astype(np.float32), M.FOLIAGE)
        leaf[crown] = blotch[crown]
    lamp = kind == LAMP
    if lamp.any():
        paint(lamp & body & (z < top), a, M.POLE)
        head = lamp & (np.abs(across) <= 0.35) & (z >= top - 0.25) & (z <= top)
        paint(head, _LAMP_OFF, M.LAMP_HEAD)
    sign = kind == SIGN
    if sign.any():
        paint(sign & body & (z < top - size), _GREY, M.POLE)
        half = np.maximum(size / 2, 1e-3)
        r = (across / half) ** 2 + ((z - (top - half)) / half) ** 2
        paint(sign & (r <= 1.0), a, M.PLATE)
        paint(sign & (r <= 0.45), b, M.PLATE)
    person = kind == PERSON
    if person.any():
        paint(person & body & (z < 0.85) & (np.abs(across) <= width / 2.8), b, M.PERSON)
        paint(person & body & (z >= 0.85) & (z < top - 0.25), a, M.PERSON)
        head = person & ((across / 0.11) ** 2 + ((z - (top - 0.12)) / 0.13) ** 2 <= 1.0)
        paint(head, _SKIN, M.PERSON)
    bin_ = kind == BIN
    if bin_.any():
        paint(bin_ & body & (z < top), a, M.BIN)
        paint(bin_ & body & (z < top) & (z > top - 0.1), a * 0.5, M.BIN)
    return colour, material, leaf
