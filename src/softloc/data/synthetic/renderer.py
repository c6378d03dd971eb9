"""2.5-D ray casting: one ray per image column against the walls, ground and sky per row.

The camera looks along its heading with no pitch or roll, so a wall at forward depth t spans
the rows between its foot and its top, and every ground point seen in row r lies at depth
``camera_height / v(r)``. For each column the nearest few front-facing walls are found in one
vectorised step; a farther wall shows where it rises above the nearer ones (skyline, parked
cars in front of houses). Trees, lamps, signs and people are billboards drawn back to front
with a depth test. The result is a G-buffer (albedo, material, depth, world position, normal)
that :mod:`.conditions` lights.
"""

from __future__ import annotations

import math

import numpy as np

from softloc.data.synthetic import materials as M
from softloc.data.synthetic.camera import Camera, GBuffer, Pose
from softloc.data.synthetic.conditions import shade
from softloc.data.synthetic.scene import DriveScene, make_drive_scene
from softloc.data.synthetic.sprites import BIN, LAMP, PERSON, SIGN, TREE, Sprites
from softloc.data.synthetic.walls import Walls
from softloc.data.synthetic.world import ROAD_HALF, SIDEWALK, World

#: Nearest walls kept per column (hidden walls behind these are not drawn).
LAYERS = 4
#: Walls nearer than this (metres) are clipped.
NEAR = 0.3
#: Sprites farther than this (metres) are not drawn.
SPRITE_DISTANCE = 90.0


def rasterise(scene: DriveScene, pose: Pose, camera: Camera) -> GBuffer:
    """Ray cast ``scene`` from ``pose``: the G-buffer of every pixel."""
    width, height = camera.width, camera.height
    h = camera.height_m
    n_pix = width * height
    cos_y, sin_y = math.cos(pose.yaw), math.sin(pose.yaw)
    slopes = camera.column_slopes()
    ray_x = cos_y + slopes * sin_y  # (W,) ray directions with unit forward component
    ray_y = sin_y - slopes * cos_y
    v = camera.row_slopes()

    g = GBuffer(
        albedo=np.zeros((n_pix, 3), dtype=np.float32),
        material=np.zeros(n_pix, dtype=np.int8),
        depth=np.full(n_pix, np.inf, dtype=np.float32),
        x=np.zeros(n_pix, dtype=np.float32),
        y=np.zeros(n_pix, dtype=np.float32),
        z=np.zeros(n_pix, dtype=np.float32),
        nx=np.zeros(n_pix, dtype=np.float32),
        ny=np.zeros(n_pix, dtype=np.float32),
        key=np.zeros(n_pix, dtype=np.float32),
        light=np.zeros((n_pix, 3), dtype=np.float32),
        lateral=np.zeros(n_pix, dtype=np.float32),
    )
    walls = scene.walls
    visible = _cull_walls(walls, pose, camera)
    t_hit, wall_hit, u_hit = _cast(walls, visible, pose, ray_x, ray_y, camera.view_distance)

    # Which layer (nearest wall first) covers each pixel, if any.
    wall_top = walls.height[wall_hit]
    with np.errstate(divide="ignore", invalid="ignore"):
        top = np.where(np.isfinite(t_hit), (h - wall_top) / t_hit, np.inf)  # (W, K)
        foot = np.where(np.isfinite(t_hit), h / t_hit, -np.inf)
    layer = np.full((height, width), -1, dtype=np.int8)
    vv = v[:, None]
    for k in range(t_hit.shape[1]):
        cover = (layer < 0) & (vv >= top[None, :, k]) & (vv <= foot[None, :, k])
        layer[cover] = k
    layer = layer.ravel()

    pix_row = np.repeat(np.arange(height), width)
    pix_col = np.tile(np.arange(width), height)

    on_wall = np.flatnonzero(layer >= 0)
    if len(on_wall):
        col = pix_col[on_wall]
        k = layer[on_wall]
        t = t_hit[col, k]
        index = wall_hit[col, k]
        z = h - v[pix_row[on_wall]] * t
        albedo, material, key = M.wall_texture(walls, index, u_hit[col, k], z)
        nx_all, ny_all = walls.normal
        g.albedo[on_wall] = albedo
        g.material[on_wall] = material
        g.key[on_wall] = key
        g.depth[on_wall] = t
        g.x[on_wall] = pose.x + t * ray_x[col]
        g.y[on_wall] = pose.y + t * ray_y[col]
        g.z[on_wall] = z
        g.nx[on_wall] = nx_all[index]
        g.ny[on_wall] = ny_all[index]

    on_ground = np.flatnonzero((layer < 0) & (v[pix_row] > 0))
    if len(on_ground):
        col = pix_col[on_ground]
        t = np.minimum(h / v[pix_row[on_ground]], 4 * camera.view_distance)
        gx = pose.x + t * ray_x[col]
        gy = pose.y + t * ray_y[col]
        world = scene.world
        albedo, material, lateral = M.ground_texture(
            world.grid, world.lot_colour, world.crossing, gx, gy, ROAD_HALF, SIDEWALK
        )
        g.albedo[on_ground] = albedo
        g.material[on_ground] = material
        g.depth[on_ground] = t
        g.x[on_ground] = gx
        g.y[on_ground] = gy
        g.lateral[on_ground] = lateral

    _draw_sprites(g, scene.sprites, pose, camera)
    return g


def _cull_walls(walls: Walls, pose: Pose, camera: Camera) -> np.ndarray:
    """Indices of walls that may be seen: not wholly behind, beside or beyond the view."""
    cos_y, sin_y = math.cos(pose.yaw), math.sin(pose.yaw)
    ax, ay = walls.ax - pose.x, walls.ay - pose.y
    bx, by = walls.bx - pose.x, walls.by - pose.y
    fa = ax * cos_y + ay * sin_y
    fb = bx * cos_y + by * sin_y
    la = ax * sin_y - ay * cos_y
    lb = bx * sin_y - by * cos_y
    spread = 0.5 * camera.width / camera.focal + 0.02
    keep = (np.maximum(fa, fb) > NEAR) & (np.minimum(fa, fb) < camera.view_distance)
    keep &= ~((la - fa * spread > 0) & (lb - fb * spread > 0))
    keep &= ~((-la - fa * spread > 0) & (-lb - fb * spread > 0))
    # Back faces: the camera is behind the wall's plane.
    nx, ny = walls.by - walls.ay, walls.ax - walls.bx
    keep &= (ax * nx + ay * ny) < 0
    return np.flatnonzero(keep)


def _cast(
    walls: Walls,
    visible: np.ndarray,
    pose: Pose,
    ray_x: np.ndarray,
    ray_y: np.ndarray,
    view_distance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest :data:`LAYERS` front-facing wall hits of each column's ray, nearest first.

    Returns:
        depth (W, K) metres (inf where no hit), wall index (W, K), and distance along the
        wall from its start point (W, K) metres.
    """
    width = len(ray_x)
    k = min(LAYERS, max(len(visible), 1))
    if len(visible) == 0:
        return (np.full((width, k), np.inf), np.zeros((width, k), dtype=np.int64),
                np.zeros((width, k)))
    ax, ay = walls.ax[visible], walls.ay[visible]
    ex, ey = walls.bx[visible] - ax, walls.by[visible] - ay
    rx, ry = ax - pose.x, ay - pose.y
    denom = ray_x[:, None] * ey[None, :] - ray_y[:, None] * ex[None, :]  # cross(d, e)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / denom
        t = (rx * ey - ry * ex)[None, :] * inv
        u = (rx[None, :] * ray_y[:, None] - ry[None, :] * ray_x[:, None]) * inv
    hit = (denom < -1e-12) & (t > NEAR) & (t < view_distance) & (u >= 0.0) & (u <= 1.0)
    t = np.where(hit, t, np.inf)
    if t.shape[1] > k:
        nearest = np.argpartition(t, k - 1, axis=1)[:, :k]
    else:
        nearest = np.broadcast_to(np.arange(t.shape[1]), (width, t.shape[1]))
    rows = np.arange(width)[:, None]
    order = np.argsort(t[rows, nearest], axis=1)
    nearest = nearest[rows, order]
    depth = t[rows, nearest]
    along = u[rows, nearest] * walls.length[visible][nearest]
    return depth, visible[nearest], np.nan_to_num(along)


def _draw_sprites(g: GBuffer, sprites: Sprites, pose: Pose, camera: Camera) -> None:
    """Draw billboards back to front where they are nearer than what is there."""
    if len(sprites) == 0:
        return
    cos_y, sin_y = math.cos(pose.yaw), math.sin(pose.yaw)
    rx, ry = sprites.x - pose.x, sprites.y - pose.y
    depth = rx * cos_y + ry * sin_y
    lateral = rx * sin_y - ry * cos_y
    spread = 0.5 * camera.width / camera.focal
    reach = np.maximum(sprites.size, sprites.width) + 0.5
    f = camera.focal
    tall = sprites.top * f / np.maximum(depth, 1e-3) > 2.0
    seen = (depth > 1.0) & (depth < SPRITE_DISTANCE) & (np.abs(lateral) < depth * spread + reach)
    seen &= tall
    order = np.flatnonzero(seen)
    order = order[np.argsort(-depth[order], kind="stable")]
    if len(order) == 0:
        return
    shape = (camera.height, camera.width)
    views = _Views(g, shape)
    for i in order:
        _draw_one(views, sprites, int(i), float(depth[i]), float(lateral[i]), pose, camera)


class _Views:
    """2-D views of the G-buffer arrays for drawing rectangles of pixels."""

    def __init__(self, g: GBuffer, shape: tuple[int, int]) -> None:
        self.albedo = g.albedo.reshape(*shape, 3)
        self.material = g.material.reshape(shape)
        self.depth = g.depth.reshape(shape)
        self.x = g.x.reshape(shape)
        self.y = g.y.reshape(shape)
        self.z = g.z.reshape(shape)
        self.nx = g.nx.reshape(shape)
        self.ny = g.ny.reshape(shape)
        self.light = g.light.reshape(*shape, 3)


def _draw_one(
    views: _Views, sprites: Sprites, i: int, depth: float, lateral: float, pose: Pose,
    camera: Camera,
) -> None:
    """Draw sprite ``i`` at forward ``depth`` and ``lateral`` offset (metres)."""
    f = camera.focal
    scale = f / depth  # pixels per metre
    centre_col = 0.5 * camera.width + lateral * scale
    h = camera.height_m
    kind = int(sprites.kind[i])
    top = float(sprites.top[i])
    size = float(sprites.size[i])
    half = max(float(sprites.width[i]), size) * scale if kind in (TREE, SIGN, LAMP) else (
        0.5 * float(sprites.width[i]) * scale
    )
    half = max(half, 0.5) + 0.5
    c0 = max(int(math.floor(centre_col - half)), 0)
    c1 = min(int(math.ceil(centre_col + half)) + 1, camera.width)
    r0 = max(int(math.floor(0.5 * camera.height + (h - top) * scale)) - 1, 0)
    r1 = min(int(math.ceil(0.5 * camera.height + h * scale)) + 1, camera.height)
    if c0 >= c1 or r0 >= r1:
        return
    cols = np.arange(c0, c1) + 0.5
    rows = np.arange(r0, r1) + 0.5
    # Metric coordinates of the pixel grid on the billboard: across (m) and height z (m).
    across = ((cols - centre_col) / scale)[None, :]
    z = (h - (rows - 0.5 * camera.height) / scale)[:, None]
    parts = _sprite_parts(kind, sprites, i, across, z, scale)
    nearer = views.depth[r0:r1, c0:c1] > depth
    normal_x, normal_y = -math.cos(pose.yaw), -math.sin(pose.yaw)
    for mask, colour, material in parts:
        m = mask & nearer
        if not m.any():
            continue
        views.albedo[r0:r1, c0:c1][m] = colour if np.ndim(colour) == 1 else colour[m]
        views.material[r0:r1, c0:c1][m] = material
        views.depth[r0:r1, c0:c1][m] = depth
        views.x[r0:r1, c0:c1][m] = sprites.x[i]
        views.y[r0:r1, c0:c1][m] = sprites.y[i]
        views.z[r0:r1, c0:c1][m] = np.broadcast_to(z, m.shape)[m]
        views.nx[r0:r1, c0:c1][m] = normal_x
        views.ny[r0:r1, c0:c1][m] = normal_y
        if material == M.LAMP_HEAD:
            views.light[r0:r1, c0:c1][m] = sprites.colour_b[i]


def _sprite_parts(
    kind: int, sprites: Sprites, i: int, across: np.ndarray, z: np.ndarray, scale: float
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(mask, albedo, material) of each part of sprite ``i``, later parts drawn on top.

    ``across`` (1, C) and ``z`` (R, 1) are metric coordinates of the pixel centres.
    """
    top = float(sprites.top[i])
    size = float(sprites.size[i])
    width = max(float(sprites.width[i]), 0.6 / scale)  # at least about a pixel wide
    a = sprites.colour_a[i]
    b = sprites.colour_b[i]
    body = (np.abs(across) <= width / 2) & (z >= 0)
    if kind == TREE:
        crown_z = top - size
        trunk = body & (z < crown_z)
        crown = (across / size) ** 2 + ((z - crown_z) / (0.9 * size)) ** 2 <= 1.0
        # Leaves: blotches fixed to the tree in metres so the texture is the same every view.
        leaf = M.hash_unit(sprites.key[i], np.floor(across * 2.2 + 50), np.floor(z * 2.2), 31)
        colour = a[None, None, :] * (0.65 + 0.7 * leaf[..., None]).astype(np.float32)
        colour = np.broadcast_to(colour, crown.shape + (3,))
        return [(trunk, b, M.TRUNK), (crown, colour, M.FOLIAGE)]
    if kind == LAMP:
        pole = body & (z < top)
        head = (np.abs(across) <= 0.35) & (z >= top - 0.25) & (z <= top)
        return [(pole, a, M.POLE), (head, np.array([0.75, 0.75, 0.72], np.float32), M.LAMP_HEAD)]
    if kind == SIGN:
        post = body & (z < top - size)
        r = ((across / (size / 2)) ** 2 + ((z - (top - size / 2)) / (size / 2)) ** 2)
        plate = r <= 1.0
        symbol = r <= 0.45
        return [(post, np.array([0.5, 0.5, 0.5], np.float32), M.POLE), (plate, a, M.PLATE),
                (symbol, b, M.PLATE)]
    if kind == PERSON:
        legs = body & (z < 0.85) & (np.abs(across) <= width / 2.8)
        coat = body & (z >= 0.85) & (z < top - 0.25)
        head = (across / 0.11) ** 2 + ((z - (top - 0.12)) / 0.13) ** 2 <= 1.0
        skin = np.array([0.78, 0.62, 0.5], np.float32)
        return [(legs, b, M.PERSON), (coat, a, M.PERSON), (head, skin, M.PERSON)]
    if kind == BIN:
        box = body & (z < top)
        lid = box & (z > top - 0.1)
        return [(box, a, M.BIN), (lid, a * 0.5, M.BIN)]
    return []


def render_view(
    scene: DriveScene, pose: Pose, camera: Camera, frame_index: int = 0
) -> np.ndarray:
    """Render one frame of a drive.

    Args:
        scene: the drive's scene (see :func:`~.scene.make_drive_scene`).
        pose: camera position (metres) and heading (radians).
        camera: image size and optics.
        frame_index: seeds per-frame randomness (sensor noise, snowflakes).

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    g = rasterise(scene, pose, camera)
    image = shade(g, scene, pose, camera, frame_index)
    return (image * 255.0 + 0.5).astype(np.uint8)


def render_frame(
    world: World,
    pose: Pose,
    condition: str,
    drive_seed: int,
    width: int = 120,
    height: int = 90,
    fov_deg: float = 66.0,
    frame_index: int = 0,
) -> np.ndarray:
    """Render one image of ``world`` from ``pose`` under ``condition``: (H, W, 3) uint8.

    A convenience for single images: it builds the drive's scene (parked cars, light, sun
    shadows) from ``drive_seed`` on every call. To render many frames of one drive, build
    the scene once with :func:`~.scene.make_drive_scene` and call :func:`render_view`.

    Raises:
        ValueError: unknown condition or an image smaller than 16 x 16.
    """
    if width < 16 or height < 16:
        raise ValueError(f"image size {width}x{height} is too small; use at least 16x16")
    scene = make_drive_scene(world, condition, drive_seed)
    camera = Camera(
        width=width,
        height=height,
        fov_deg=fov_deg,
        height_m=world.config.camera_height,
        view_distance=world.config.view_distance,
    )
    return render_view(scene, pose, camera, frame_index)
