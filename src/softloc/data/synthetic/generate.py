"""Write the town dataset to disk in the canonical layout.

``OUT/images/<traversal>/<index:05d>.png``, ``OUT/places.csv`` and ``OUT/town.json`` (the
resolved settings and a summary). Images are written atomically, and ``places.csv`` last, so
an interrupted run never looks complete. The same config gives the same bytes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from softloc.atomic import write_json, write_with
from softloc.data.places import PLACES_FILE, PlaceTable, read_places, write_places
from softloc.data.synthetic.camera import Camera, Pose
from softloc.data.synthetic.config import TownConfig
from softloc.data.synthetic.drives import Drive, plan_drives
from softloc.data.synthetic.renderer import render_view
from softloc.data.synthetic.scene import make_drive_scene
from softloc.data.synthetic.world import World, build_world

logger = logging.getLogger(__name__)

#: Name of the file holding the resolved settings next to ``places.csv``.
TOWN_FILE = "town.json"
#: Bumped whenever the same config would render different images.
GENERATOR_VERSION = 1


def camera_for(config: TownConfig) -> Camera:
    """The camera every drive of ``config`` uses."""
    return Camera(
        width=config.width,
        height=config.height,
        fov_deg=config.fov_deg,
        height_m=config.camera_height,
        view_distance=config.view_distance,
    )


def generate_town(
    out: str | os.PathLike[str],
    config: TownConfig = TownConfig(),  # noqa: B008 - frozen, so a safe default
    progress: bool = True,
) -> PlaceTable:
    """Generate the procedural town and its drives into the folder ``out``.

    Every image is rendered and written again (nothing is skipped). Images of an earlier
    town in ``out`` that the new table does not list are removed.

    Args:
        out: dataset folder; created if missing. It must be empty or hold an earlier town.
        config: what to generate.
        progress: show a tqdm progress bar over all frames.

    Returns:
        The places table, as read back by :func:`~softloc.data.places.read_places`.

    Raises:
        ValueError: invalid config (from :class:`TownConfig`) or ``out`` holds something
            other than a town.
    """
    out = Path(out)
    _check_target(out)
    world = build_world(config)
    drives = plan_drives(world, config)
    camera = camera_for(config)
    # Remove the table first: until it is written again the folder does not look complete.
    (out / PLACES_FILE).unlink(missing_ok=True)
    total = sum(len(d) for d in drives)
    tables = []
    with tqdm(total=total, disable=not progress, desc="town", unit="img") as bar:
        for drive in drives:
            tables.append(_write_drive(out, world, drive, camera, config, bar))
    table = PlaceTable.concat(tables)
    _remove_stale_images(out, table)
    write_json(out / TOWN_FILE, _summary(config, world, drives))
    write_places(table, out / PLACES_FILE)
    logger.info("wrote %d images of %d drives to %s", len(table), len(drives), out)
    return read_places(out)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder to write the town into")
    if out.is_dir() and any(out.iterdir()) and not (out / TOWN_FILE).is_file():
        raise ValueError(
            f"{out} is not empty and holds no {TOWN_FILE}; choose an empty folder (or an "
            "earlier town's folder) so that no other files get mixed with the town"
        )


def _write_drive(
    out: Path, world: World, drive: Drive, camera: Camera, config: TownConfig, bar: tqdm
) -> PlaceTable:
    scene = make_drive_scene(world, drive.condition, drive.seed)
    folder = out / "images" / drive.traversal
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(drive)):
        pose = Pose(float(drive.x[i]), float(drive.y[i]), float(drive.yaw[i]))
        image = render_view(scene, pose, camera, frame_index=i)
        relative = f"images/{drive.traversal}/{i:05d}.png"
        _write_png(out / relative, image, config.png_compress_level)
        paths.append(relative)
        bar.update(1)
    n = len(drive)
    return PlaceTable(
        path=np.asarray(paths, dtype=str),
        x=drive.x,
        y=drive.y,
        yaw=drive.yaw,
        timestamp=drive.timestamp,
        traversal=np.full(n, drive.traversal),
        condition=np.full(n, drive.condition),
        split=drive.split,
        root=out,
    )


def _write_png(path: Path, image: np.ndarray, level: int) -> None:
    picture = Image.fromarray(image)
    write_with(path, lambda tmp: picture.save(tmp, format="PNG", compress_level=level))


def _remove_stale_images(out: Path, table: PlaceTable) -> None:
    listed = {str(p) for p in table.path}
    images = out / "images"
    stale = [p for p in images.rglob("*.png") if p.relative_to(out).as_posix() not in listed]
    for p in stale:
        p.unlink()
    if stale:
        logger.info("removed %d images of an earlier town from %s", len(stale), images)


def _summary(config: TownConfig, world: World, drives: list[Drive]) -> dict:
    return {
        "generator": "softloc.data.synthetic",
        "version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "route_length_m": round(world.route.length, 3),
        "blocks": list(world.grid.shape),
        "buildings": len(world.walls) // 4,
        "drives": [
            {
                "traversal": d.traversal,
                "condition": d.condition,
                "seed": d.seed,
                "frames": len(d),
                "frames_per_split": {k: int((d.split == k).sum()) for k in ("train", "val", "test")},
            }
            for d in drives
        ],
    }
