"""Write the town dataset to disk in the canonical layout.

``OUT/images/<traversal>/<index:05d>.png``, ``OUT/places.csv`` and ``OUT/town.json`` (the
resolved settings, :meth:`TownConfig.to_dict`). ``town.json`` is written first (it marks the
folder as a town's, so a killed run can be rerun there), images atomically, and ``places.csv``
last, so an interrupted run never looks complete. The same config gives the
same bytes (on one platform: numpy's vectorised maths may round differently elsewhere).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from softloc.atomic import write_json
from softloc.data.places import PLACES_FILE, PlaceTable, read_places, write_places
from softloc.data.synthetic.camera import Camera, Pose
from softloc.data.synthetic.config import TownConfig
from softloc.data.synthetic.drives import Drive, plan_drives
from softloc.data.synthetic.renderer import render_view
from softloc.data.synthetic.scene import DriveScene, make_drive_scene
from softloc.data.synthetic.world import World, build_world
from softloc.output_folders import OutputFolderError, claim_output_folder

logger = logging.getLogger(__name__)

#: Name of the file holding the resolved settings next to ``places.csv``.
TOWN_FILE = "town.json"
#: Frames per task when rendering on several processes.
CHUNK_FRAMES = 300
#: Towns with fewer frames are rendered in one process when ``workers`` is None.
PARALLEL_MIN_FRAMES = 1500


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
    workers: int | None = None,
) -> PlaceTable:
    """Generate the procedural town and its drives into the folder ``out``.

    Every image is rendered and written again (nothing is skipped). Images of an earlier
    town in ``out`` that the new table does not list are removed. The bytes written do not
    depend on ``workers``.

    Args:
        out: dataset folder; created if missing. It must be empty or hold an earlier town.
        config: what to generate.
        progress: show a tqdm progress bar over all frames.
        workers: processes that render in parallel; None uses one per CPU core (at most 4),
            and 1 for small towns (under :data:`PARALLEL_MIN_FRAMES` frames).

    Returns:
        The places table, as read back by :func:`~softloc.data.places.read_places`.

    Raises:
        ValueError: invalid config (from :class:`TownConfig`), ``workers`` < 1, or ``out``
            holds something other than a town.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers={workers}; use 1 or more processes, or None for one per core")
    out = Path(out)
    _check_target(out)
    world = build_world(config)
    drives = plan_drives(world, config)
    camera = camera_for(config)
    total = sum(len(d) for d in drives)
    if workers is None:
        workers = 1 if total < PARALLEL_MIN_FRAMES else min(_usable_cores(), 4)
    # Remove the table first: until it is written again the folder does not look complete.
    (out / PLACES_FILE).unlink(missing_ok=True)
    # The settings next: they mark the folder as a town's, so a killed first run can be rerun.
    write_json(out / TOWN_FILE, config.to_dict())
    for drive in drives:
        (out / "images" / drive.traversal).mkdir(parents=True, exist_ok=True)
    level = config.png_compress_level
    with tqdm(total=total, disable=not progress, desc="town", unit="img", mininterval=1.0) as bar:
        if workers == 1:
            for drive in drives:
                scene = make_drive_scene(world, drive.condition, drive.seed)
                _render_range(scene, drive, 0, len(drive), out, camera, level, bar.update)
        else:
            _render_parallel(world, drives, out, camera, level, workers, bar.update)
    table = PlaceTable.concat([_drive_table(out, d) for d in drives])
    _remove_stale_images(out, table)
    write_places(table, out / PLACES_FILE)
    logger.info(
        "wrote %d images of %d drives (route %.0f m, %d buildings) to %s",
        len(table), len(drives), world.route.length, len(world.walls) // 4, out,
    )
    return read_places(out)


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def image_path(drive: Drive, index: int) -> str:
    """Path of frame ``index`` of ``drive``, relative to the dataset root."""
    return f"images/{drive.traversal}/{index:05d}.png"


def _render_range(
    scene: DriveScene,
    drive: Drive,
    start: int,
    stop: int,
    out: Path,
    camera: Camera,
    level: int,
    done: Callable[[int], object] | None = None,
) -> int:
    """Render and write frames ``start`` to ``stop`` (excluded) of ``drive``."""
    for i in range(start, stop):
        pose = Pose(float(drive.x[i]), float(drive.y[i]), float(drive.yaw[i]))
        image = render_view(scene, pose, camera, frame_index=i)
        write_png(out / image_path(drive, i), image, level)
        if done is not None:
            done(1)
    return stop - start


def _render_chunk(
    world: World, drive: Drive, start: int, stop: int, out: Path, camera: Camera, level: int
) -> int:
    """Worker task: build the drive's scene and render one stretch of its frames."""
    scene = make_drive_scene(world, drive.condition, drive.seed)
    return _render_range(scene, drive, start, stop, out, camera, level)


def _render_parallel(
    world: World,
    drives: list[Drive],
    out: Path,
    camera: Camera,
    level: int,
    workers: int,
    done: Callable[[int], object],
) -> None:
    """Render all drives in stretches of :data:`CHUNK_FRAMES` frames on ``workers`` processes.

    A failure in any stretch cancels the rest and is raised here.
    """
    context = multiprocessing.get_context("spawn")  # safe whatever the parent has imported
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(_render_chunk, world, drive, start, min(start + CHUNK_FRAMES, len(drive)),
                        out, camera, level)
            for drive in drives
            for start in range(0, len(drive), CHUNK_FRAMES)
        ]
        try:
            for future in as_completed(futures):
                done(future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _drive_table(out: Path, drive: Drive) -> PlaceTable:
    n = len(drive)
    return PlaceTable(
        path=np.asarray([image_path(drive, i) for i in range(n)], dtype=str),
        x=drive.x,
        y=drive.y,
        yaw=drive.yaw,
        timestamp=drive.timestamp,
        traversal=np.full(n, drive.traversal),
        condition=np.full(n, drive.condition),
        split=drive.split,
        root=out,
    )


def _check_target(out: Path) -> None:
    """``out`` must be missing, empty or an earlier town (the one --out rule, plus: a dataset
    that is not a town, e.g. a prepared one, is not replaced)."""
    # a prepared dataset holds prepare's report.json: let the check below name it
    if not claim_output_folder(out, "dataset", allow=("report",)):
        return
    if not (out / TOWN_FILE).is_file() or (out / "prepare.json").is_file():
        raise OutputFolderError(
            f"{out} is not empty and holds a dataset that is not a town (no {TOWN_FILE}, or a "
            "prepare.json); nothing was written. Choose an empty folder (or an earlier town's "
            "folder) for --out so that no other dataset is replaced"
        )


def write_png(path: Path, image: np.ndarray, level: int) -> None:
    """Encode ``image`` (H, W, 3) uint8 as PNG and move it into place atomically.

    The same protocol as :mod:`softloc.atomic` (temporary name beside the target, then
    rename), with a temporary name made from the process id instead of ``mkstemp``: this runs
    once per image, and the cheaper name halves the time spent on the file system.
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=level)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_images(out: Path, table: PlaceTable) -> None:
    """Delete images (and temporary files of killed runs) the new table does not list."""
    listed = {str(p) for p in table.path}
    images = out / "images"
    stale = [p for p in images.rglob("*.png") if p.relative_to(out).as_posix() not in listed]
    stale += list(images.rglob(".*.tmp"))
    for p in stale:
        p.unlink()
    if stale:
        logger.info("removed %d files of an earlier town from %s", len(stale), images)
