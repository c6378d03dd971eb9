"""Speed of the image checks: the Trainer's start-up header check against a full decode.

    PYTHONPATH=src python benchmarks/check_speed.py --images 2000 --size 240x180 --workers 1 2

Writes a dataset of noise PNGs (incompressible, so the PNG checksums cover real bytes) into a
temporary folder and times `softloc.check.header_check` and `softloc.check.check_images`
(what `softloc check` runs) on it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from softloc.check import check_images, header_check
from softloc.data.places import PlaceTable, write_places


def make_dataset(root: Path, count: int, size: tuple[int, int]) -> PlaceTable:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = f"images/{i:06d}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / path)
        paths.append(path)
    n = len(paths)
    table = PlaceTable(
        path=np.array(paths), x=np.arange(n, dtype=float), y=np.zeros(n), yaw=np.zeros(n),
        timestamp=np.arange(n, dtype=float), traversal=np.full(n, "reference"),
        condition=np.full(n, "overcast"), split=np.full(n, "train"), root=root,
    )
    write_places(table, root / "places.csv")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", default="240x180")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        table = make_dataset(Path(folder), args.images, (width, height))
        for workers in args.workers:
            for name, check in (("header check", header_check), ("full decode", check_images)):
                began = time.perf_counter()
                problems = check(table, workers=workers)
                seconds = time.perf_counter() - began
                assert not problems, problems[:3]
                print(f"workers {workers}: {name}: {args.images} images {width}x{height}: "
                      f"{seconds:.2f} s ({1000 * seconds / args.images:.2f} ms/image)")


if __name__ == "__main__":
    main()
