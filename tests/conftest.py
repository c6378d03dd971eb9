"""Shared fixtures: small tables of places and tiny image folders made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softloc.data.places import PlaceTable, write_places


def make_drive_table(
    root: Path,
    traversals: dict[str, str],
    length: float = 120.0,
    spacing: float = 1.0,
    write_images: bool = True,
    size: tuple[int, int] = (32, 24),
) -> PlaceTable:
    """A straight east-bound street; one drive per traversal.

    Regions: x < 70 train, 80 <= x < 100 test, x > 105 val (the gaps hold no images).

    Images are seeded noise whose mean colour drifts with x, so that they differ by place.
    """
    rows: dict[str, list] = {k: [] for k in ("path", "x", "y", "yaw", "timestamp")}
    labels: dict[str, list] = {"traversal": [], "condition": [], "split": []}
    rng = np.random.default_rng(0)
    for t, (traversal, condition) in enumerate(traversals.items()):
        offset = 0.5 * t
        for i, x in enumerate(np.arange(0.0, length, spacing)):
            if 70 <= x < 80 or 100 <= x <= 105:
                continue
            path = f"images/{traversal}/{i:05d}.png"
            if write_images:
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                base = np.array([x * 2 % 256, (x * 5) % 256, 128], dtype=np.float64)
                image = np.clip(base + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
                Image.fromarray(image.astype(np.uint8)).save(root / path)
            rows["path"].append(path)
            rows["x"].append(x)
            rows["y"].append(offset)
            rows["yaw"].append(0.0)
            rows["timestamp"].append(1000.0 * t + i)
            labels["traversal"].append(traversal)
            labels["condition"].append(condition)
            labels["split"].append("train" if x < 70 else "test" if x < 100 else "val")
    table = PlaceTable(**{k: np.asarray(v) for k, v in {**rows, **labels}.items()}, root=root)
    write_places(table, root / "places.csv")
    return table


@pytest.fixture
def street(tmp_path: Path) -> PlaceTable:
    """Two drives (reference overcast, night) along a 120 m street with tiny images."""
    return make_drive_table(tmp_path, {"reference": "overcast", "night": "night"})
