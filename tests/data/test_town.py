"""The procedural town: determinism, layout on disk, regions, drives, conditions, geometry."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from softloc.data.places import PlacesError, read_places
from softloc.data.synthetic import (
    Camera,
    Pose,
    TownConfig,
    build_world,
    generate_town,
    make_drive_scene,
    plan_drives,
    render_frame,
    render_view,
)
from softloc.data.synthetic import generate as generate_module
from softloc.data.synthetic.conditions import SHADERS
from softloc.data.synthetic.config import CONDITIONS
from softloc.data.synthetic.materials import GROUND_MATERIALS, SKY, hash_unit
from softloc.data.synthetic.renderer import rasterise
from softloc.data.synthetic.route import snake_of_blocks
from softloc.data.synthetic.shadows import shadow_map
from softloc.data.synthetic.sprites import Sprites
from softloc.data.synthetic.walls import FACADE, Walls, box_walls

#: A short town with tiny images: two drives, a frame every 2 m.
SMALL = TownConfig(
    seed=0,
    width=32,
    height=24,
    route_length=420.0,
    frame_spacing=2.0,
    conditions=("night",),
    region_fractions=(0.5, 0.2, 0.3),
    region_gap=30.0,
)
#: The same town's plan with every condition (planning renders nothing, so it is cheap).
PLAN = replace(SMALL, conditions=("overcast", "sunny", "night", "snow"), frame_spacing=1.0)


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_town(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("town") / "small"
    generate_town(out, SMALL, progress=False)
    return out


@pytest.fixture(scope="module")
def world():
    return build_world(PLAN)


def test_same_seed_gives_the_same_bytes(small_town: Path, tmp_path: Path) -> None:
    again = generate_town(tmp_path / "again", SMALL, progress=False, workers=2)
    assert len(again) > 100
    assert digest(tmp_path / "again") == digest(small_town)


def test_another_seed_gives_another_town(small_town: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_town(other, replace(SMALL, seed=1), progress=False)
    first, second = digest(small_town), digest(other)
    assert first["places.csv"] != second["places.csv"]
    shared = [p for p in first if p.endswith(".png") and p in second]
    differing = sum(first[p] != second[p] for p in shared)
    assert differing >= 0.95 * len(shared)
    walls = [build_world(replace(SMALL, seed=s)).walls for s in (0, 1)]
    assert walls[0].ax.tolist() != walls[1].ax.tolist()


def test_table_round_trips_with_every_image(small_town: Path) -> None:
    table = read_places(small_town, check_images=True)
    assert table.traversals() == ["reference", "night"]
    assert table.conditions() == ["overcast", "night"]
    assert set(table.split) == {"train", "val", "test"}
    train, test = table.where(split="train").xy, table.where(split="test").xy
    apart = np.hypot(*(train[:, None, :] - test[None, :, :]).transpose(2, 0, 1)).min()
    assert apart >= SMALL.region_gap
    for traversal in table.traversals():
        drive = table.where(traversal=traversal)
        assert np.all(np.diff(drive.timestamp) > 0)
        assert np.all(np.abs(drive.yaw) <= math.pi)
        assert drive.path[0] == f"images/{traversal}/00000.png"
    # drives happen on different days
    starts = [table.where(traversal=t).timestamp.min() for t in table.traversals()]
    assert abs(starts[1] - starts[0]) > 12 * 3600
    from PIL import Image

    with Image.open(table.image_path(0)) as image:
        assert image.size == (32, 24) and image.mode == "RGB"
    assert (small_town / "town.json").read_text().count('"seed": 0') == 1


def test_regions_are_apart_in_space(world) -> None:
    drives = plan_drives(world, PLAN)
    xy = np.concatenate([np.stack([d.x, d.y], 1) for d in drives])
    split = np.concatenate([d.split for d in drives])
    assert set(split) == {"train", "val", "test"}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        pa, pb = xy[split == a], xy[split == b]
        nearest = np.min(np.hypot(pa[:, None, 0] - pb[None, :, 0], pa[:, None, 1] - pb[None, :, 1]))
        assert nearest >= PLAN.region_gap, (a, b, nearest)
    # shares roughly as asked (gaps and corners take some)
    share = {k: np.mean(split == k) for k in ("train", "val", "test")}
    assert share["train"] > share["test"] > share["val"] > 0.05


def test_frames_are_about_one_spacing_apart(world) -> None:
    for drive in plan_drives(world, PLAN):
        step = np.hypot(np.diff(drive.x), np.diff(drive.y))
        step = step[step < 10]  # across a dropped gap frames are far apart
        assert 0.9 < np.median(step) < 1.1
        assert np.all((step > 0.5) & (step < 1.6))
        assert len(drive) > 0.8 * world.route.length / PLAN.frame_spacing * 0.7


def test_query_drives_stay_beside_the_reference(world) -> None:
    drives = plan_drives(world, PLAN)
    ref = np.stack([drives[0].x, drives[0].y], 1)
    for drive in drives[1:]:
        q = np.stack([drive.x, drive.y], 1)
        d = np.hypot(q[:, None, 0] - ref[None, :, 0], q[:, None, 1] - ref[None, :, 1])
        nearest = d.min(axis=1)
        # 1 to 3.5 m sideways (plus the reference's own +-0.25 m wander and 1 m spacing)
        assert np.quantile(nearest, 0.02) > 0.6
        assert nearest.max() < 4.1
        assert np.ptp(nearest) > 1.5  # the offset varies along the drive
        # headings agree with the reference's within a few degrees (away from corners)
        j = d.argmin(axis=1)
        turn = np.angle(np.exp(1j * (drive.yaw - drives[0].yaw[j])))
        assert np.quantile(np.abs(np.degrees(turn)), 0.9) < 6.0


def _view(world, condition: str, s: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) in [0, 1] and sky mask (H, W) at arc length ``s``, no transients."""
    scene = make_drive_scene(world, condition, 5, transients=False)
    x, y, yaw = world.route.at(np.array([s]))
    pose = Pose(float(x[0]), float(y[0]), float(yaw[0]))
    camera = Camera(width=64, height=48)
    sky = rasterise(scene, pose, camera).material.reshape(48, 64) == SKY
    return render_view(scene, pose, camera) / 255.0, sky


def test_conditions_change_the_image(world) -> None:
    overcast, sky = _view(world, "overcast")
    night, _ = _view(world, "night")
    snow, _ = _view(world, "snow")
    sunny, _ = _view(world, "sunny")
    assert sky.sum() > 50
    assert night.mean() < 0.4 * overcast.mean()
    bottom = slice(40, 48)  # the road just ahead of the car
    assert snow[bottom].mean() > overcast[bottom].mean() + 0.2
    blue = lambda image: (image[..., 2] - image[..., 0])[sky].mean()  # noqa: E731
    assert blue(sunny) > blue(overcast) + 0.1
    assert sunny.std() > overcast.std()
    for image in (night, snow, sunny):
        assert np.abs(image - overcast).mean() > 0.1


def test_static_world_is_the_same_on_every_drive(world) -> None:
    a = make_drive_scene(world, "overcast", 1, transients=False)
    b = make_drive_scene(world, "overcast", 2, transients=False)
    b = replace(b, appearance=a.appearance, seed=a.seed)
    camera = Camera(width=48, height=36)
    for s in (5.0, 150.0, 300.0):
        x, y, yaw = world.route.at(np.array([s]))
        pose = Pose(float(x[0]), float(y[0]), float(yaw[0]))
        assert np.array_equal(render_view(a, pose, camera), render_view(b, pose, camera))
    # ... while parked cars and people move between drives
    c = make_drive_scene(world, "overcast", 1)
    d = make_drive_scene(world, "overcast", 2)
    assert len(c.walls) > len(world.walls) and len(d.walls) > len(world.walls)
    static = len(world.walls)
    assert not np.array_equal(c.walls.ax[static:][:20], d.walls.ax[static:][:20])


def test_wall_projects_where_pinhole_geometry_says(world) -> None:
    # One 10 m tall box 20 m ahead of a camera at 1.5 m looking along +x.
    box = np.array([[120.0, -50.0], [130.0, -50.0], [130.0, 50.0], [120.0, 50.0]]) + [0, 0]
    rows = box_walls(box, (FACADE,) * 4, height=10.0, base=(0.5, 0.5, 0.5), floor_h=3.0,
                     ground_h=3.0, bay=3.0, win_w=0.5, win_h=0.5, window_keep=1.0)
    lone = replace(world, walls=Walls.from_rows(rows), sprites=Sprites.empty())
    scene = make_drive_scene(lone, "overcast", 0, transients=False)
    camera = Camera(width=80, height=60, fov_deg=66.0, height_m=1.5)
    g = rasterise(scene, Pose(100.0, 0.0, 0.0), camera)
    depth = g.depth.reshape(60, 80)
    sky = (g.material == SKY).reshape(60, 80)
    centre = 40
    f = camera.focal
    wall_rows = np.flatnonzero(np.isclose(depth[:, centre], 20.0, atol=1e-3))
    top_expected = 30 - f * (10.0 - 1.5) / 20.0  # row coordinate of the wall's top edge
    assert abs(wall_rows.min() - top_expected) <= 1.0
    assert sky[: int(top_expected) - 1, centre].all()
    # below the foot of the wall the ground is seen at depth h / v
    foot_expected = 30 + f * 1.5 / 20.0
    assert abs(wall_rows.max() - foot_expected) <= 1.0
    r = 59
    v = (r + 0.5 - 30) / f
    assert np.isclose(depth[r, centre], 1.5 / v, rtol=1e-4)
    assert g.material.reshape(60, 80)[r, centre] in GROUND_MATERIALS


def test_shadow_top_matches_the_sun_geometry() -> None:
    # A 12 m tall box at x in [0, 10]; the sun is low in the -x direction (azimuth pi) at
    # 45 degrees, so the box shades the +x side, the shadow top falling 1 m per metre.
    boxes = np.array([[0.0, 0.0, 10.0, 10.0]])
    smap = shadow_map(boxes, np.array([12.0]), (-20.0, -10.0, 40.0, 20.0), math.pi,
                      math.radians(45.0), cell=0.5)
    x = np.array([11.0, 15.0, 21.0, 25.0, -2.0, 15.0])
    y = np.array([5.0, 5.0, 5.0, 5.0, 5.0, 15.0])  # the last one is beside the shadow
    expected = np.array([11.0, 7.0, 1.0, 0.0, 0.0, 0.0])
    assert np.allclose(smap.lookup(x, y), expected, atol=0.6)


def test_snake_outline_is_one_loop() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 4, 10):
        cells = snake_of_blocks(rng, n, (7, 6))
        assert len(cells) == n
        steps = ((1, 0), (-1, 0), (0, 1), (0, -1))
        edges = sum((i + di, j + dj) not in cells for i, j in cells for di, dj in steps)
        assert edges == 2 * n + 2  # a tree of cells: the outline never pinches


def test_route_has_the_asked_length_and_closes(world) -> None:
    route = world.route
    assert abs(route.length - PLAN.route_length) < 0.01 * PLAN.route_length
    step = np.hypot(np.diff(route.x), np.diff(route.y))
    assert step.max() < 0.3
    gap = math.hypot(route.x[0] - route.x[-1], route.y[0] - route.y[-1])
    assert gap < 0.3


def test_hash_is_repeatable_and_spread() -> None:
    a = np.arange(10000)
    first = hash_unit(a, 7)
    assert np.array_equal(first, hash_unit(a, 7))
    assert not np.array_equal(first, hash_unit(a, 8))
    assert first.min() >= 0 and first.max() < 1
    assert abs(first.mean() - 0.5) < 0.02
    assert np.histogram(first, bins=10, range=(0, 1))[0].min() > 900


def test_every_condition_has_its_lighting() -> None:
    assert tuple(SHADERS) == CONDITIONS


def test_render_frame_returns_an_rgb_image(world) -> None:
    x, y, yaw = world.route.at(np.array([50.0, 120.0]))
    first = render_frame(world, Pose(x[0], y[0], yaw[0]), "snow", 3, width=40, height=30)
    second = render_frame(world, Pose(x[1], y[1], yaw[1]), "snow", 3, width=40, height=30)
    assert first.shape == (30, 40, 3) and first.dtype == np.uint8
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 5
    with pytest.raises(ValueError, match="condition"):
        render_frame(world, Pose(x[0], y[0], yaw[0]), "fog", 3)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"width": 8}, "width"),
        ({"height": 15}, "height"),
        ({"conditions": ("overcast", "rain")}, "conditions"),
        ({"conditions": ()}, "conditions"),
        ({"route_length": 150.0}, "route_length"),
        ({"route_length": -5.0}, "route_length"),
        ({"frame_spacing": 0.0}, "frame_spacing"),
        ({"frame_spacing": -1.0}, "frame_spacing"),
        ({"region_fractions": (0.5, 0.3, 0.3)}, "region_fractions"),
        ({"fov_deg": 0.0}, "fov_deg"),
    ],
)
def test_invalid_config_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"TownConfig.{field}"):
        TownConfig(**change)


def test_the_suggested_route_length_is_enough() -> None:
    with pytest.raises(ValueError, match="use at least") as error:
        TownConfig(route_length=500.0)
    least = float(re.search(r"use at least (\d+) m", str(error.value)).group(1))
    for seed in range(3):
        world = build_world(TownConfig(seed=seed, route_length=least))
        assert all((world.region_label == k).sum() >= 10 for k in range(3))


def test_refuses_a_folder_holding_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files softloc did not write"):
        generate_town(tmp_path, SMALL, progress=False)
    with pytest.raises(ValueError, match="workers"):
        generate_town(tmp_path / "new", SMALL, progress=False, workers=0)


def test_interrupted_run_never_looks_complete(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "town"
    generate_town(out, SMALL, progress=False)
    calls = {"n": 0}
    real = generate_module.render_view

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "render_view", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        generate_town(out, replace(SMALL, seed=1), progress=False, workers=1)
    with pytest.raises(PlacesError):
        read_places(out)
    assert not list(out.rglob(".*.tmp"))  # no half-written image is left behind
    # a complete run over it again leaves exactly the new town (old images removed)
    monkeypatch.undo()
    shorter = replace(SMALL, seed=1, frame_spacing=3.0)
    table = generate_town(out, shorter, progress=False)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert on_disk == sorted(table.path.tolist())
