"""Speed (and difficulty) of the procedural town.

Speed: images per second of rendering alone and of rendering plus PNG writing, per condition,
in one process; optionally the wall-clock time of ``generate_town`` for the whole default town.

Difficulty (``--difficulty``): nearest neighbour on raw pixels (32 x 24, L2-normalised) from
each query drive's test-region frames to the overcast reference's test-region frames; the
share of queries whose top-1 reference lies within 10 m, next to chance (the share of all
query/reference pairs within 10 m). The town is meant to give high numbers for overcast and
near-chance numbers for sunny, night and snow.

Montage (``--montage PATH``): the reference and every query drive at the same three places,
as in ``docs/img/town_conditions.png``.

Usage::

    python benchmarks/town_speed.py [--frames 300] [--full] [--workers 2] [--difficulty]
    python benchmarks/town_speed.py --frames 0 --montage docs/img/town_conditions.png
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from softloc.data.synthetic import (
    Pose,
    TownConfig,
    build_world,
    camera_for,
    generate_town,
    make_drive_scene,
    plan_drives,
    render_view,
)
from softloc.data.synthetic.generate import write_png


def speed(config: TownConfig, frames: int) -> None:
    """Print images/s of rendering and of rendering + PNG writing for every drive."""
    world = build_world(config)
    drives = plan_drives(world, config)
    camera = camera_for(config)
    print("| drive | condition | render only (img/s) | render + PNG write (img/s) |")
    print("|---|---|---|---|")
    totals = [0.0, 0.0, 0]
    with tempfile.TemporaryDirectory() as tmp:
        for drive in drives:
            scene = make_drive_scene(world, drive.condition, drive.seed)
            index = np.linspace(0, len(drive) - 1, frames).astype(int)
            poses = [Pose(drive.x[i], drive.y[i], drive.yaw[i]) for i in index]
            start = time.perf_counter()
            for i, pose in zip(index, poses, strict=True):
                render_view(scene, pose, camera, int(i))
            render = time.perf_counter() - start
            start = time.perf_counter()
            for i, pose in zip(index, poses, strict=True):
                image = render_view(scene, pose, camera, int(i))
                write_png(Path(tmp) / f"{drive.traversal}_{i:05d}.png", image,
                           config.png_compress_level)
            write = time.perf_counter() - start
            totals[0] += render
            totals[1] += write
            totals[2] += frames
            print(f"| {drive.traversal} | {drive.condition} | {frames / render:.0f} | "
                  f"{frames / write:.0f} |")
    print(f"| all | | {totals[2] / totals[0]:.0f} | {totals[2] / totals[1]:.0f} |")


def full(config: TownConfig, workers: int | None) -> None:
    """Print the wall-clock time of generating the whole town."""
    out = Path(tempfile.mkdtemp(prefix="town_"))
    try:
        start = time.perf_counter()
        table = generate_town(out / "town", config, progress=False, workers=workers)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"generate_town: {len(table)} images in {seconds:.1f} s "
          f"({len(table) / seconds:.0f} img/s, workers={workers})")


def difficulty(config: TownConfig, query_step: int = 2) -> None:
    """Print raw-pixel top-1 accuracy at 10 m per condition on the test region."""
    world = build_world(config)
    drives = plan_drives(world, config)
    camera = camera_for(config)

    def descriptors(drive, step):
        scene = make_drive_scene(world, drive.condition, drive.seed)
        index = np.flatnonzero(drive.split == "test")[::step]
        rows = []
        for i in index:
            image = render_view(scene, Pose(drive.x[i], drive.y[i], drive.yaw[i]), camera, int(i))
            small = np.asarray(Image.fromarray(image).resize((32, 24), Image.BILINEAR), np.float32)
            rows.append(small.ravel() / np.linalg.norm(small))
        return np.stack(rows), np.stack([drive.x[index], drive.y[index]], axis=1)

    reference, ref_xy = descriptors(drives[0], 1)
    print(f"seed {config.seed}: {len(reference)} test references")
    print("| condition | queries | raw-pixel top-1 within 10 m | chance |")
    print("|---|---|---|---|")
    for drive in drives[1:]:
        query, q_xy = descriptors(drive, query_step)
        best = np.argmax(query @ reference.T, axis=1)
        hit = np.hypot(*(q_xy - ref_xy[best]).T) < 10.0
        pair = np.hypot(*(q_xy[:, None, :] - ref_xy[None, :, :]).transpose(2, 0, 1))
        print(f"| {drive.condition} | {len(query)} | {hit.mean():.3f} | "
              f"{(pair < 10.0).mean():.3f} |")


def montage(config: TownConfig, path: Path, places: tuple[float, ...] = (0.18, 0.47, 0.8)) -> None:
    """Save a grid: one row per place (fractions of the route), one column per drive."""
    from PIL import ImageDraw

    world = build_world(config)
    drives = plan_drives(world, config)
    camera = camera_for(config)
    scale, header = 2, 14
    w, h = config.width * scale, config.height * scale
    sheet = Image.new("RGB", (w * len(drives), header + h * len(places)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, drive in enumerate(drives):
        label = drive.traversal if drive.traversal == "reference" else f"query: {drive.condition}"
        draw.text((column * w + 4, 1), label, fill=(0, 0, 0))
        scene = make_drive_scene(world, drive.condition, drive.seed)
        for row, share in enumerate(places):
            i = int(np.argmin(np.abs(drive.s - share * world.route.length)))
            image = render_view(scene, Pose(drive.x[i], drive.y[i], drive.yaw[i]), camera, i)
            tile = Image.fromarray(image).resize((w, h), Image.NEAREST)
            sheet.paste(tile, (column * w, header + row * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep the picture under 200 KB; the noise of the night frames does not
    # compress otherwise.
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, format="PNG", optimize=True
    )
    print(f"montage: {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames timed per drive")
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--full", action="store_true", help="time generate_town on the town")
    parser.add_argument("--workers", type=int, default=None, help="processes for --full")
    parser.add_argument("--difficulty", action="store_true", help="raw-pixel NN per condition")
    parser.add_argument("--montage", type=Path, help="save a picture of the conditions here")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    for seed in args.seed:
        config = TownConfig(seed=seed)
        if args.frames > 0:
            speed(config, args.frames)
        if args.full:
            full(config, args.workers)
        if args.difficulty:
            difficulty(config)
        if args.montage:
            montage(config, args.montage)


if __name__ == "__main__":
    main()
