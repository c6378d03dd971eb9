"""Lighting and weather: turn a G-buffer into an image under one condition.

The conditions are deliberately strong, like Oxford RobotCar's: what stays the same between
them is the geometry of the place (window grids, signs, doors, building heights and gaps,
trees, lamps), while global colour, brightness, contrast and local shading all change.

- ``overcast``: soft, even light, white-grey sky, mild haze.
- ``sunny``: warm direct sun with hard cast shadows of buildings, cars and trees on the road
  and on facades, blue shadows and sky, walls facing away from the sun dark, windows
  reflecting the sky, high contrast.
- ``night``: almost no ambient light, a random subset of windows and shop signs lit, street
  lamps (bright heads with a glow, pools of light below), headlights on the road ahead,
  strong sensor noise.
- ``snow``: white ground with darker tyre tracks, snow on ledges, cornices and car roofs,
  snowy crowns, grey sky, fog that swallows distance, low contrast and falling flakes.

Every drive also has its own exposure and white balance (:class:`.scene.Appearance`).
"""

from __future__ import annotations

import math

import numpy as np

from softloc.data.synthetic import materials as M
from softloc.data.synthetic.camera import Camera, GBuffer, Pose
from softloc.data.synthetic.scene import DriveScene
from softloc.data.synthetic.sprites import LAMP

_WALL_MATERIALS = np.array(
    [M.WALL, M.WINDOW, M.LEDGE, M.SIGN, M.DOOR, M.SHOP_GLASS, M.CAR_BODY, M.CAR_GLASS, M.WHEEL,
     M.CAR_ROOF]
)
_SPRITE_MATERIALS = np.array([M.FOLIAGE, M.TRUNK, M.POLE, M.LAMP_HEAD, M.PERSON, M.PLATE, M.BIN])


def shade(
    g: GBuffer, scene: DriveScene, pose: Pose, camera: Camera, frame_index: int = 0
) -> np.ndarray:
    """Light the G-buffer under ``scene.condition``: (H, W, 3) float32 image in [0, 1]."""
    condition = scene.condition
    if condition == "overcast":
        image = _overcast(g, camera)
    elif condition == "sunny":
        image = _sunny(g, scene, camera)
    elif condition == "night":
        image = _night(g, scene, pose, camera)
    elif condition == "snow":
        image = _snow(g, camera)
    else:  # make_drive_scene has validated it already
        raise ValueError(f"unknown condition {condition!r}")
    appearance = scene.appearance
    image *= appearance.exposure * appearance.white_balance[None, :]
    image = image.reshape(camera.height, camera.width, 3)
    rng = np.random.default_rng([scene.seed, int(frame_index), 3])
    if condition == "snow":
        _snowflakes(image, rng)
    if appearance.noise > 0:
        image += rng.normal(0.0, appearance.noise, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def _masks(g: GBuffer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sky = g.material == M.SKY
    wall = np.isin(g.material, _WALL_MATERIALS)
    sprite = np.isin(g.material, _SPRITE_MATERIALS)
    ground = ~(sky | wall | sprite)
    return sky, wall, ground, sprite


def _sky_rows(camera: Camera, top: tuple, horizon: tuple) -> np.ndarray:
    """(H, 3) sky colour per row, from ``top`` at the image top to ``horizon``."""
    v = camera.row_slopes()
    above = np.clip(-v / max(float(-v[0]), 1e-6), 0.0, 1.0)[:, None]
    return (np.asarray(horizon) * (1 - above) + np.asarray(top) * above).astype(np.float32)


def _fill_sky(image: np.ndarray, sky: np.ndarray, camera: Camera, top, horizon) -> None:
    rows = _sky_rows(camera, top, horizon)
    image[sky] = rows[np.flatnonzero(sky) // camera.width]


def _fog(image: np.ndarray, g: GBuffer, distance: float, colour) -> None:
    """Blend towards ``colour`` with weight 1 - exp(-depth / distance)."""
    depth = np.where(np.isfinite(g.depth), g.depth, 1e6)
    weight = (1.0 - np.exp(-depth / distance)).astype(np.float32)[:, None]
    image *= 1.0 - weight
    image += weight * np.asarray(colour, dtype=np.float32)


def _overcast(g: GBuffer, camera: Camera) -> np.ndarray:
    sky, wall, ground, sprite = _masks(g)
    light = np.full(len(g.depth), 0.92, dtype=np.float32)
    light[wall] = 0.80 + 0.07 * g.nx[wall] + 0.03 * g.ny[wall]
    light[sprite] = 0.82
    image = g.albedo * light[:, None] * np.array([0.97, 0.98, 1.0], np.float32)
    glass = np.isin(g.material, M.GLASS_MATERIALS)
    image[glass] += np.array([0.10, 0.11, 0.12], np.float32)  # dull sky reflection
    _fill_sky(image, sky, camera, (0.72, 0.74, 0.78), (0.88, 0.89, 0.9))
    _fog(image, g, 320.0, (0.86, 0.87, 0.88))
    return image


def _sunny(g: GBuffer, scene: DriveScene, camera: Camera) -> np.ndarray:
    appearance = scene.appearance
    sky, wall, ground, sprite = _masks(g)
    az, el = appearance.sun_azimuth, appearance.sun_elevation
    sx, sy = math.cos(az), math.sin(az)
    sun_colour = np.array([1.0, 0.88, 0.68], np.float32) * 1.7
    ambient = np.array([0.26, 0.31, 0.44], np.float32)
    shadows = scene.shadows
    direct = np.zeros(len(g.depth), dtype=np.float32)
    # Ground: lit by sin(elevation) where no blocker is between it and the sun.
    top = shadows.lookup(g.x[ground], g.y[ground]) if shadows else np.zeros(ground.sum())
    direct[ground] = np.where(top > 0.05, 0.0, math.sin(el))
    # Walls: lit if facing the sun and above the shadow top just in front of them.
    facing = (g.nx[wall] * sx + g.ny[wall] * sy) * math.cos(el)
    probe_x = g.x[wall] + 0.6 * g.nx[wall]
    probe_y = g.y[wall] + 0.6 * g.ny[wall]
    top = shadows.lookup(probe_x, probe_y) if shadows else np.zeros(wall.sum())
    direct[wall] = np.where((facing > 0) & (g.z[wall] >= top), facing, 0.0)
    # Billboards: half lit unless their base is in a shadow that reaches their height.
    top = shadows.lookup(g.x[sprite], g.y[sprite]) if shadows else np.zeros(sprite.sum())
    facing = 0.35 + 0.35 * (g.nx[sprite] * sx + g.ny[sprite] * sy)
    direct[sprite] = np.where(g.z[sprite] >= top, facing * math.cos(el), 0.0)
    light = ambient[None, :] + direct[:, None] * sun_colour[None, :]
    image = g.albedo * light
    glass = np.isin(g.material, M.GLASS_MATERIALS)
    sky_glint = np.array([0.30, 0.42, 0.62], np.float32)
    image[glass] += sky_glint + 0.35 * direct[glass, None]  # reflections of sky and sun
    _fill_sky(image, sky, camera, (0.16, 0.36, 0.82), (0.58, 0.74, 0.95))
    _fog(image, g, 500.0, (0.62, 0.74, 0.92))
    # High contrast, slightly warm.
    image = (image - 0.45) * 1.25 + 0.45
    image *= np.array([1.05, 1.0, 0.92], np.float32)
    return image


def _night(g: GBuffer, scene: DriveScene, pose: Pose, camera: Camera) -> np.ndarray:
    appearance = scene.appearance
    sky, wall, ground, sprite = _masks(g)
    n = len(g.depth)
    light = np.tile(np.array([0.03, 0.035, 0.055], np.float32), (n, 1))
    lit = ~sky
    light[lit] += _lamp_light(g, scene, pose, lit)
    light[lit] += _headlights(g, pose, lit)
    image = g.albedo * light
    # Emissive windows, shop fronts and signs: a per-drive random subset is on.
    material = g.material
    key = np.floor(g.key.astype(np.float64) * 1e6)
    chance = M.hash_unit(key, appearance.salt)
    warm = np.array([1.0, 0.78, 0.42], np.float32)
    cool = np.array([0.65, 0.78, 1.0], np.float32)
    window = (material == M.WINDOW) & (chance < appearance.lit_windows)
    tint = np.where((M.hash_unit(key, appearance.salt, 2) < 0.2)[:, None], cool, warm)
    image[window] = (tint[window] * (0.55 + 0.45 * chance[window, None]
                                     / max(appearance.lit_windows, 1e-6)))
    shop = (material == M.SHOP_GLASS) & (chance < 0.6)
    image[shop] = np.array([0.95, 0.88, 0.7], np.float32)
    sign = (material == M.SIGN) & (chance < appearance.lit_signs)
    image[sign] = np.clip(g.albedo[sign] * 1.3 + 0.1, 0, 1)
    heads = material == M.LAMP_HEAD
    image[heads] = g.light[heads] * 1.6
    _fill_sky(image, sky, camera, (0.012, 0.016, 0.035), (0.10, 0.075, 0.06))
    image = image.reshape(camera.height, camera.width, 3)
    image += 0.8 * _glow(np.maximum(image - 0.75, 0.0))
    return image.reshape(-1, 3)


def _lamp_light(g: GBuffer, scene: DriveScene, pose: Pose, lit: np.ndarray) -> np.ndarray:
    """Light (P_lit, 3) from the street lamps within 70 m of the camera."""
    sprites = scene.sprites
    near = (sprites.kind == LAMP) & (np.hypot(sprites.x - pose.x, sprites.y - pose.y) < 70.0)
    out = np.zeros((int(lit.sum()), 3), dtype=np.float32)
    if not near.any():
        return out
    x, y, z = g.x[lit], g.y[lit], g.z[lit]
    nx, ny = g.nx[lit], g.ny[lit]
    horizontal = (nx == 0) & (ny == 0)
    for i in np.flatnonzero(near):
        lx, ly, lz = sprites.x[i] - x, sprites.y[i] - y, sprites.top[i] - 0.3 - z
        d2 = lx * lx + ly * ly + lz * lz + 0.25
        d = np.sqrt(d2)
        cosine = np.where(horizontal, lz / d, np.maximum((nx * lx + ny * ly) / d, 0.0) * 0.8)
        power = 7.0 * np.maximum(cosine, 0.0) / (1.0 + d2 / 6.0)
        out += power[:, None] * sprites.colour_b[i][None, :]
    return out


def _headlights(g: GBuffer, pose: Pose, lit: np.ndarray) -> np.ndarray:
    """Light (P_lit, 3) of the car's own headlights: a cone on the road ahead."""
    cos_y, sin_y = math.cos(pose.yaw), math.sin(pose.yaw)
    rx, ry = g.x[lit] - pose.x, g.y[lit] - pose.y
    forward = rx * cos_y + ry * sin_y
    lateral = rx * sin_y - ry * cos_y
    z = g.z[lit]
    cone = np.exp(-((lateral / (0.32 * forward + 0.8)) ** 2))
    low = np.exp(-((np.maximum(z - 0.9, 0.0) / (0.12 * forward + 0.3)) ** 2))
    reach = 1.0 / (1.0 + (forward / 14.0) ** 2)
    power = 0.9 * cone * low * reach * (forward > 1.5)
    return power[:, None] * np.array([0.95, 0.93, 0.85], np.float32)[None, :]


def _glow(bright: np.ndarray) -> np.ndarray:
    """A soft halo (H, W, 3) around bright pixels: box blur, twice, radius 3."""
    out = bright
    for _ in range(2):
        out = _box_blur(_box_blur(out, 3, axis=0), 3, axis=1)
    return out * 2.5


def _box_blur(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(a, pad), axis=axis)
    n = a.shape[axis]
    hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / (2 * r + 1)


def _snow(g: GBuffer, camera: Camera) -> np.ndarray:
    sky, wall, ground, sprite = _masks(g)
    albedo = g.albedo.copy()
    material = g.material
    white = np.array([0.93, 0.94, 0.96], np.float32)
    albedo[ground] = white
    road = ground & ((material == M.ROAD) | (material == M.MARKING))
    albedo[road] = 0.84
    track_pos = np.abs(np.abs(g.lateral) - 1.75)
    tracks = road & (np.abs(track_pos - 0.8) < 0.32)
    grit = M.hash_unit(np.floor(g.x * 3), np.floor(g.y * 3), 5).astype(np.float32)
    albedo[tracks] = (0.5 + 0.12 * grit[tracks])[:, None] * np.array([1.0, 0.98, 0.95], np.float32)
    settled = (material == M.LEDGE) | (material == M.CAR_ROOF)
    albedo[settled] = white
    foliage = material == M.FOLIAGE
    flakes = M.hash_unit(np.floor(g.z * 4), np.floor((g.x + g.y) * 7), 9) < 0.55
    albedo[foliage & flakes] = white
    light = np.full(len(g.depth), 0.9, dtype=np.float32)
    light[wall] = 0.78 + 0.04 * g.nx[wall]
    image = albedo * light[:, None] * np.array([0.95, 0.97, 1.0], np.float32)
    _fill_sky(image, sky, camera, (0.70, 0.71, 0.73), (0.78, 0.79, 0.80))
    _fog(image, g, 45.0, (0.78, 0.79, 0.80))
    image = 0.7 * image + 0.3 * 0.72  # flat light, low contrast
    return image


def _snowflakes(image: np.ndarray, rng: np.random.Generator) -> None:
    """Falling flakes: bright dots, some of them two pixels or short streaks (in place)."""
    height, width = image.shape[:2]
    count = int(0.02 * height * width)
    rows = rng.integers(0, height, size=count)
    cols = rng.integers(0, width, size=count)
    level = rng.uniform(0.8, 1.0, size=count).astype(np.float32)
    image[rows, cols] = level[:, None]
    big = rng.random(count) < 0.3
    image[np.minimum(rows[big] + 1, height - 1), cols[big]] = level[big, None]
    wide = big & (rng.random(count) < 0.5)
    image[rows[wide], np.minimum(cols[wide] + 1, width - 1)] = level[wide, None]
