"""Speed of ``softloc prepare robotcar`` on full-size synthetic RobotCar frames.

Builds one drive of N raw Bayer GBRG frames at the real 1280x960 size (smooth random colour
fields, so PNG decode costs are realistic), an ins.csv at 50 Hz, then times a full prepare
(demosaic + resize to 240 + PNG write) and a resumed rerun (all images present).

    python benchmarks/prepare_speed.py --frames 40 --threads 1 --workers 1 2

Results recorded in benchmarks/prepare_speed.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from softloc.data.readers.robotcar import INS_COLUMNS
from softloc.prepare import prepare


def make_drive(root: Path, frames: int, size: tuple[int, int] = (1280, 960)) -> None:
    date = "2014-12-02-15-30-08"
    drive = root / date
    (drive / "stereo" / "centre").mkdir(parents=True)
    (drive / "gps").mkdir()
    t0 = 1418132416737115
    stamps = [t0 + 10_000 + i * 62_500 for i in range(frames)]  # 16 Hz
    (drive / "stereo.timestamps").write_text("".join(f"{t} 1\n" for t in stamps))
    rows = [",".join(INS_COLUMNS)]
    for k in range(frames * 4 + 10):
        t = t0 + k * 20_000
        rows.append(f"{t},INS_SOLUTION_GOOD,51.76,-1.26,114.7,{5735848 + k * 0.1},"
                    f"{620057 + k * 0.1},-114.7,30U,0,0,0,0,0,0.7")
    (drive / "gps" / "ins.csv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    w, h = size
    for t in stamps:
        coarse = rng.integers(0, 256, (h // 32, w // 32), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
        Image.fromarray(field, mode="L").save(drive / "stereo" / "centre" / f"{t}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="prepare workers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}, threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "robotcar"
        make_drive(root, args.frames)
        for workers in args.workers:
            out = Path(tmp) / f"out{workers}"
            start = time.perf_counter()
            result = prepare("robotcar", root, out, progress=False, workers=workers)
            first = time.perf_counter() - start
            start = time.perf_counter()
            prepare("robotcar", root, out, progress=False, workers=workers)
            resumed = time.perf_counter() - start
            print(f"workers {workers}: {len(result.table)} frames 1280x960 Bayer -> 240x180: "
                  f"{first:.2f} s ({1000 * first / args.frames:.1f} ms/frame); "
                  f"resumed rerun {resumed:.2f} s")


if __name__ == "__main__":
    main()
