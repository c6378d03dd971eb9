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
from softloc.data.synthetic.billboards import draw_sprites
from softloc.data.synthetic.camera import Camera, GBuffer, Pose
from softloc.data.synthetic.conditions import shade
from softloc.data.synthetic.scene import DriveScene, make_drive_scene
from softloc.data.synthetic.walls import Walls
from softloc.data.synthetic.world import ROAD_HALF, SIDEWALK, World

#: Nearest walls kept per column (hidden walls behind these are not drawn).
LAYERS = 4
#: Walls nearer than this (metres) are clipped.
NEAR = 0.3


def rasterise(scene: DriveScene, pose: Pose, camera: Camera) -> GBuffer:
    """Ray cast ``scene`` from ``pose``: the G-buffer of every pixel."""
    width, height = camera.width, camera.height
    h = camera.height_m
    n_pix = width * height
    cos_y, sin_y = math.cos(pose.yaw), math.sin(pose.yaw)
    # Per-pixel work runs in float32: better than 1 mm over a town a few km across.
    slopes = camera.column_slopes()
    ray_x = (cos_y + slopes * sin_y).astype(np.float32)  # (W,) unit forward component
    ray_y = (sin_y - slopes * cos_y).astype(np.float32)
    v = camera.row_slopes().astype(np.float32)

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
    below = height // 2  # first row below the horizon (rows are symmetric about it)
    ground_mask = layer[below:] < 0
    layer = layer.ravel()

    on_wall = np.flatnonzero(layer >= 0)
    if len(on_wall):
        row, col = np.divmod(on_wall, width)
        k = layer[on_wall]
        t = t_hit[col, k]
        index = wall_hit[col, k]
        z = h - v[row] * t
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

    on_ground = np.flatnonzero(ground_mask) + below * width
    on_ground = on_ground[v[on_ground // width] > 0]
    if len(on_ground):
        row, col = np.divmod(on_ground, width)
        t = np.minimum(h / v[row], 4 * camera.view_distance)
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

    draw_sprites(g, scene.sprites, pose, camera)
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
        return (np.full((width, k), np.inf, dtype=np.float32),
                np.zeros((width, k), dtype=np.int64), np.zeros((width, k), dtype=np.float32))
    # Relative coordinates stay within the view distance, so float32 is precise to < 0.1 mm.
    rx = (walls.ax[visible] - pose.x).astype(np.float32)
    ry = (walls.ay[visible] - pose.y).astype(np.float32)
    ex = (walls.bx[visible] - walls.ax[visible]).astype(np.float32)
    ey = (walls.by[visible] - walls.ay[visible]).astype(np.float32)
    dx = ray_x[:, None]
    dy = ray_y[:, None]
    # Ray c + t d meets wall a + u e where t = cross(r, e) / cross(d, e) and
    # u = cross(r, d) / cross(d, e). Front faces have cross(d, e) < 0, so the tests
    # 0 <= u <= 1 and NEAR < t < view_distance become comparisons without division.
    denom = dx * ey - dy * ex  # (W, M)
    num_t = rx * ey - ry * ex  # (M,)
    num_u = rx * dy - ry * dx  # (W, M)
    hit = (denom < -1e-9) & (num_u <= 0) & (num_u >= denom)
    hit &= (num_t < NEAR * denom) & (num_t > view_distance * denom)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(hit, num_t / denom, np.float32(np.inf))
    if t.shape[1] > k:
        nearest = np.argpartition(t, k - 1, axis=1)[:, :k]
    else:
        nearest = np.broadcast_to(np.arange(t.shape[1]), (width, t.shape[1]))
    rows = np.arange(width)[:, None]
    order = np.argsort(t[rows, nearest], axis=1, kind="stable")
    nearest = nearest[rows, order]
    depth = t[rows, nearest]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = num_u[rows, nearest] / denom[rows, nearest]
    along = np.clip(np.nan_to_num(u), 0.0, 1.0) * walls.length[visible][nearest].astype(
        np.float32
    )
    return depth, visible[nearest], along


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
