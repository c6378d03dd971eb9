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
from collections.abc import Callable

import numpy as np

from softloc.data.synthetic import materials as M
from softloc.data.synthetic.camera import Camera, GBuffer, Pose
from softloc.data.synthetic.scene import DriveScene
from softloc.data.synthetic.sprites import LAMP

# Surface category of each material code: 0 sky, 1 wall (building or car), 2 ground, 3 sprite.
_CATEGORY = np.zeros(64, dtype=np.int8)
_CATEGORY[[M.WALL, M.WINDOW, M.LEDGE, M.SIGN, M.DOOR, M.SHOP_GLASS, M.CAR_BODY, M.CAR_GLASS,
           M.WHEEL, M.CAR_ROOF]] = 1
_CATEGORY[list(M.GROUND_MATERIALS)] = 2
_CATEGORY[[M.FOLIAGE, M.TRUNK, M.POLE, M.LAMP_HEAD, M.PERSON, M.PLATE, M.BIN]] = 3
_IS_GLASS = np.zeros(64, dtype=bool)
_IS_GLASS[list(M.GLASS_MATERIALS)] = True


def shade(
    g: GBuffer, scene: DriveScene, pose: Pose, camera: Camera, frame_index: int = 0
) -> np.ndarray:
    """Light the G-buffer under ``scene.condition``: (H, W, 3) float32 image in [0, 1]."""
    condition = scene.condition
    if condition not in SHADERS:  # make_drive_scene has checked it already
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(SHADERS)}")
    image = SHADERS[condition](g, scene, pose, camera)
    appearance = scene.appearance
    image *= appearance.exposure * appearance.white_balance[None, :]
    image = image.reshape(camera.height, camera.width, 3)
    rng = np.random.default_rng([scene.seed, int(frame_index), 3])
    if condition == "snow":
        _snowflakes(image, rng)
    if appearance.noise > 0:
        image += np.float32(appearance.noise) * rng.standard_normal(image.shape, np.float32)
    return np.clip(image, 0.0, 1.0)


def _masks(g: GBuffer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (P,) of sky, wall, ground and sprite pixels."""
    category = _CATEGORY[g.material]
    return category == 0, category == 1, category == 2, category == 3


def _sky_rows(camera: Camera, top: tuple, horizon: tuple) -> np.ndarray:
    """(H, 3) sky colour per row, from ``top`` at the image top to ``horizon``."""
    v = camera.row_slopes()
    above = np.clip(-v / max(float(-v[0]), 1e-6), 0.0, 1.0)[:, None]
    return (np.asarray(horizon) * (1 - above) + np.asarray(top) * above).astype(np.float32)


def _fill_sky(image: np.ndarray, sky: np.ndarray, camera: Camera, top, horizon) -> None:
    rows = _sky_rows(camera, top, horizon)
    image[sky] = rows[np.flatnonzero(sky) // camera.width]


def _add_clouds(
    image: np.ndarray, sky: np.ndarray, clouds: np.ndarray, pose: Pose, camera: Camera
) -> None:
    """Blend white clouds (grey undersides) into the sky pixels, fixed to the world."""
    where = np.flatnonzero(sky)
    if len(where) == 0:
        return
    row, col = where // camera.width, where % camera.width
    azimuth = np.degrees(pose.yaw - np.arctan(camera.column_slopes()))[col]
    elevation = np.degrees(np.arctan(-camera.row_slopes()))[row]
    a = np.mod(np.round(azimuth).astype(int), clouds.shape[0])
    e = np.clip((elevation / 40.0 * clouds.shape[1]).astype(int), 0, clouds.shape[1] - 1)
    cover = clouds[a, e][:, None]
    underside = np.clip(clouds[a, np.maximum(e - 2, 0)], 0, 1)[:, None]
    white = np.array([0.96, 0.95, 0.93], np.float32) - 0.25 * underside * (1 - cover)
    image[where] = image[where] * (1 - cover) + white * cover


def _fog(image: np.ndarray, g: GBuffer, distance: float, colour) -> None:
    """Blend surfaces (not the sky) towards ``colour`` with weight 1 - exp(-depth / distance)."""
    depth = np.where(np.isfinite(g.depth), g.depth, 0.0)
    weight = (1.0 - np.exp(-depth / distance)).astype(np.float32)[:, None]
    image *= 1.0 - weight
    image += weight * np.asarray(colour, dtype=np.float32)


def _overcast(g: GBuffer, scene: DriveScene, pose: Pose, camera: Camera) -> np.ndarray:
    """Soft even light, brighter on walls facing one way, white-grey sky, mild haze."""
    sky, wall, ground, sprite = _masks(g)
    light = np.full(len(g.depth), 0.92, dtype=np.float32)
    light[wall] = 0.80 + 0.07 * g.nx[wall] + 0.03 * g.ny[wall]
    light[sprite] = 0.82
    image = g.albedo * light[:, None] * np.array([0.97, 0.98, 1.0], np.float32)
    glass = _IS_GLASS[g.material]
    image[glass] += np.array([0.10, 0.11, 0.12], np.float32)  # dull sky reflection
    _fill_sky(image, sky, camera, (0.72, 0.74, 0.78), (0.88, 0.89, 0.9))
    _fog(image, g, 320.0, (0.86, 0.87, 0.88))
    return image


def _sunny(g: GBuffer, scene: DriveScene, pose: Pose, camera: Camera) -> np.ndarray:
    """Warm sun with cast shadows, blue ambient, blue sky with clouds, glare, high contrast."""
    appearance = scene.appearance
    sky, wall, ground, sprite = _masks(g)
    az, el = appearance.sun_azimuth, appearance.sun_elevation
    sx, sy = math.cos(az), math.sin(az)
    sun_colour = np.array([1.0, 0.86, 0.62], np.float32) * 2.8
    ambient = np.array([0.14, 0.18, 0.32], np.float32)
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
    glass = _IS_GLASS[g.material]
    sky_glint = np.array([0.22, 0.34, 0.58], np.float32)
    image[glass] += sky_glint + 0.6 * direct[glass, None]  # reflections of sky and sun
    _fill_sky(image, sky, camera, (0.06, 0.22, 0.62), (0.36, 0.55, 0.85))
    if appearance.clouds is not None:
        _add_clouds(image, sky, appearance.clouds, pose, camera)
    _fog(image, g, 500.0, (0.42, 0.60, 0.88))
    # Glare when driving towards the sun: a warm veil, strongest at the top of the image.
    towards = max(0.0, math.cos(pose.yaw - az)) ** 2 * math.cos(el)
    if towards > 0:
        v = camera.row_slopes()
        veil = towards * 0.55 * np.clip(0.8 - v / max(float(v[-1]), 1e-6), 0.0, 1.0)
        veil = np.repeat(veil.astype(np.float32), camera.width)
        image += veil[:, None] * np.array([1.0, 0.85, 0.6], np.float32)
    # The camera meters the bright scene (auto exposure), then high contrast, warm.
    luminance = float(image.mean())
    image *= np.float32(min(max(0.42 / max(luminance, 1e-3), 0.5), 1.6))
    image = (image - 0.4) * 1.45 + 0.4
    image *= np.array([1.06, 1.0, 0.88], np.float32)
    return image


_AMBIENT_NIGHT = np.array([0.03, 0.035, 0.055], np.float32)
_WARM_WINDOW = np.array([1.0, 0.78, 0.42], np.float32)
_COOL_WINDOW = np.array([0.65, 0.78, 1.0], np.float32)
_SHOP_LIGHT = np.array([0.95, 0.88, 0.7], np.float32)


def _night(g: GBuffer, scene: DriveScene, pose: Pose, camera: Camera) -> np.ndarray:
    """Street lamps, headlights, a random subset of lit windows and signs, glow."""
    appearance = scene.appearance
    sky = _CATEGORY[g.material] == 0
    lit = ~sky
    light = np.empty((len(g.depth), 3), dtype=np.float32)
    light[sky] = _AMBIENT_NIGHT
    light[lit] = _AMBIENT_NIGHT + _lamp_light(g, scene, pose, lit) + _headlights(g, pose, lit)
    image = g.albedo * light
    # Emissive windows, shop fronts and signs: a per-drive random subset is on.
    material = g.material
    glowing = np.flatnonzero((material == M.WINDOW) | (material == M.SHOP_GLASS)
                             | (material == M.SIGN))
    if len(glowing):
        kind = material[glowing]
        key = np.floor(g.key[glowing].astype(np.float64) * 1e6)
        chance = M.hash_unit(key, appearance.salt)
        window = (kind == M.WINDOW) & (chance < appearance.lit_windows)
        cool = M.hash_unit(key, appearance.salt, 2) < 0.2
        level = 0.55 + 0.45 * chance / max(appearance.lit_windows, 1e-6)
        tint = np.where(cool[:, None], _COOL_WINDOW, _WARM_WINDOW) * level[:, None]
        image[glowing[window]] = tint[window]
        image[glowing[(kind == M.SHOP_GLASS) & (chance < 0.6)]] = _SHOP_LIGHT
        sign = glowing[(kind == M.SIGN) & (chance < appearance.lit_signs)]
        image[sign] = np.clip(g.albedo[sign] * 1.3 + 0.1, 0, 1)
    heads = np.flatnonzero(material == M.LAMP_HEAD)
    image[heads] = g.light[heads] * 1.6
    _fill_sky(image, sky, camera, (0.012, 0.016, 0.035), (0.10, 0.075, 0.06))
    image = image.reshape(camera.height, camera.width, 3)
    bright = np.maximum(image - 0.75, 0.0)
    if bright.any():
        image += 0.8 * _glow(bright)
    return image.reshape(-1, 3)


def _lamp_light(g: GBuffer, scene: DriveScene, pose: Pose, lit: np.ndarray) -> np.ndarray:
    """Light (P_lit, 3) from the street lamps within 60 m of the camera (not behind it)."""
    sprites = scene.sprites
    rx, ry = sprites.x - pose.x, sprites.y - pose.y
    ahead = rx * math.cos(pose.yaw) + ry * math.sin(pose.yaw)
    near = (sprites.kind == LAMP) & (np.hypot(rx, ry) < 60.0) & (ahead > -15.0)
    lamps = np.flatnonzero(near)
    if len(lamps) == 0:
        return np.zeros((int(lit.sum()), 3), dtype=np.float32)
    x, y, z = g.x[lit, None], g.y[lit, None], g.z[lit, None]
    nx, ny = g.nx[lit, None], g.ny[lit, None]
    lx = sprites.x[lamps].astype(np.float32) - x  # (P_lit, L)
    ly = sprites.y[lamps].astype(np.float32) - y
    lz = (sprites.top[lamps] - 0.3) - z
    d2 = lx * lx + ly * ly + lz * lz + 0.25
    inv_d = 1.0 / np.sqrt(d2)
    # Ground faces up (normal 0, 0 in the G-buffer); walls and sprites face sideways.
    up = (nx == 0) & (ny == 0)
    cosine = np.where(up, lz * inv_d, 0.8 * (nx * lx + ny * ly) * inv_d)
    power = 7.0 * np.maximum(cosine, 0.0) / (1.0 + d2 / 6.0)
    return (power @ sprites.colour_b[lamps]).astype(np.float32)


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
    """A soft halo (H, W, 3) around bright pixels: a blur computed at half resolution."""
    height, width = bright.shape[:2]
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    padded = np.zeros((2 * h2, 2 * w2, 3), dtype=np.float32)
    padded[:height, :width] = bright
    small = padded.reshape(h2, 2, w2, 2, 3).mean(axis=(1, 3))
    for _ in range(2):
        small = _box_blur(_box_blur(small, 2, axis=0), 2, axis=1)
    return 2.5 * np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)[:height, :width]


def _box_blur(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Mean over a window of 2 r + 1 along ``axis`` (zeros beyond the edges)."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(a, pad), axis=axis)
    n = a.shape[axis]
    hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / (2 * r + 1)


def _snow(g: GBuffer, scene: DriveScene, pose: Pose, camera: Camera) -> np.ndarray:
    """Snow on the ground, ledges, car roofs and crowns; tyre tracks; flat light; fog."""
    sky, wall, ground, sprite = _masks(g)
    albedo = g.albedo.copy()
    material = g.material
    white = np.array([0.93, 0.94, 0.96], np.float32)
    albedo[ground] = white
    road = ground & ((material == M.ROAD) | (material == M.MARKING))
    albedo[road] = 0.84
    # Tyre tracks: two per lane, 0.8 m either side of the lane centre, ragged at the edges.
    track_pos = np.abs(np.abs(g.lateral) - 1.75)
    grit = M.hash_unit(np.floor(g.x * 3), np.floor(g.y * 3), 5).astype(np.float32)
    tracks = road & (np.abs(track_pos - 0.8) < 0.2 + 0.15 * grit)
    slush = (0.58 + 0.12 * grit[tracks])[:, None]
    albedo[tracks] = slush * np.array([1.0, 0.98, 0.95], np.float32)
    settled = (material == M.LEDGE) | (material == M.CAR_ROOF)
    albedo[settled] = white
    foliage = material == M.FOLIAGE
    albedo[foliage & (g.key < 0.6)] = white  # snow on the leaf blotches of the crowns
    light = np.full(len(g.depth), 0.9, dtype=np.float32)
    light[wall] = 0.78 + 0.04 * g.nx[wall]
    image = albedo * light[:, None] * np.array([0.95, 0.97, 1.0], np.float32)
    _fill_sky(image, sky, camera, (0.70, 0.71, 0.73), (0.78, 0.79, 0.80))
    _fog(image, g, 38.0, (0.78, 0.79, 0.80))
    image = 0.7 * image + 0.3 * 0.72  # flat light, low contrast
    return image


#: Lighting of each condition: (G-buffer, scene, pose, camera) -> (P, 3) float32 image.
SHADERS: dict[str, Callable[[GBuffer, DriveScene, Pose, Camera], np.ndarray]] = {
    "overcast": _overcast,
    "sunny": _sunny,
    "night": _night,
    "snow": _snow,
}


def _snowflakes(image: np.ndarray, rng: np.random.Generator) -> None:
    """Falling flakes: bright dots, some of them two pixels or short streaks (in place)."""
    height, width = image.shape[:2]
    count = int(0.03 * height * width)
    rows = rng.integers(0, height, size=count)
    cols = rng.integers(0, width, size=count)
    level = rng.uniform(0.8, 1.0, size=count).astype(np.float32)
    image[rows, cols] = level[:, None]
    big = rng.random(count) < 0.3
    image[np.minimum(rows[big] + 1, height - 1), cols[big]] = level[big, None]
    wide = big & (rng.random(count) < 0.5)
    image[rows[wide], np.minimum(cols[wide] + 1, width - 1)] = level[wide, None]
