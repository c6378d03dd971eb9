"""Fixture makers for the readers' tests, in the datasets' exact formats.

RobotCar: tiny drives in the download layout (stereo.timestamps, Bayer PNGs, ins.csv). The
``fx`` fixture hands the makers to the tests (pytest's importlib mode cannot import helpers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softloc.data.readers.robotcar import INS_COLUMNS

#: A real ins.csv sample row (FORMATS.md 1.4): lat/lon and the INS's own UTM for that point.
SAMPLE_LAT, SAMPLE_LON = 51.760642, -1.260381
SAMPLE_NORTHING, SAMPLE_EASTING = 5735848.358489, 620057.410348


def bayer_gbrg(rgb: np.ndarray) -> np.ndarray:
    """Sample an (H, W, 3) RGB image on the GBRG Bayer grid (row 0: G B G B, row 1: R G R G)."""
    raw = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    raw[0::2, 0::2] = rgb[0::2, 0::2, 1]
    raw[0::2, 1::2] = rgb[0::2, 1::2, 2]
    raw[1::2, 0::2] = rgb[1::2, 0::2, 0]
    raw[1::2, 1::2] = rgb[1::2, 1::2, 1]
    return raw


def ins_row(t: int, northing: float, easting: float, yaw: float,
            status: str = "INS_SOLUTION_GOOD", zone: str = "30U") -> str:
    values = [str(t), status, f"{SAMPLE_LAT:.6f}", f"{SAMPLE_LON:.6f}", "114.696263",
              f"{northing:.6f}", f"{easting:.6f}", "-114.696263", zone, "0.352838", "-0.028782",
              "0.011870", "0.034337", "-0.018738", f"{yaw:.6f}"]
    return ",".join(values)


def write_drive(
    root: Path,
    date: str,
    frame_times: list[int],
    ins_rows: list[str],
    size: tuple[int, int] = (16, 12),
    colour: tuple[int, int, int] = (200, 100, 50),
    write_images: bool = True,
) -> Path:
    """One drive folder; every image is the Bayer mosaic of a constant ``colour``."""
    drive = root / date
    (drive / "stereo" / "centre").mkdir(parents=True, exist_ok=True)
    (drive / "gps").mkdir(parents=True, exist_ok=True)
    (drive / "stereo.timestamps").write_text(
        "".join(f"{t} 1\n" for t in frame_times), encoding="utf-8"
    )
    (drive / "gps" / "ins.csv").write_text(
        ",".join(INS_COLUMNS) + "\n" + "\n".join(ins_rows) + "\n", encoding="utf-8"
    )
    if write_images:
        rgb = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        rgb[...] = colour
        for t in frame_times:
            path = drive / "stereo" / "centre" / f"{t}.png"
            Image.fromarray(bayer_gbrg(rgb), mode="L").save(path)
    return drive


def straight_drive(root: Path, date: str, n: int = 12, speed: float = 5.0, **kwargs) -> Path:
    """A drive heading north-east at ``speed`` m/s, INS at 50 Hz, frames at 4 Hz."""
    t0 = 1418132416737115
    ins = []
    for k in range(n * 13 + 20):
        t = t0 + k * 20_000
        s = speed * (t - t0) / 1e6
        ins.append(ins_row(t, SAMPLE_NORTHING + s, SAMPLE_EASTING + s, np.pi / 4))
    frames = [t0 + 10_000 + i * 250_000 for i in range(n)]
    return write_drive(root, date, frames, ins, **kwargs)


@pytest.fixture
def fx():
    """This module: the fixture makers."""
    return sys.modules[__name__]


# ---------------------------------------------------------------------------------------------
# Pittsburgh: dbStruct .mat files written with scipy.io.savemat in the NetVLAD layout

PITTS_MAT = Path(__file__).resolve().parents[2] / "fixtures" / "pitts30k_test" / "pitts30k_test.mat"


def write_dbstruct(path: Path, db_names, utm_db, q_names, utm_q, which="test") -> Path:
    """A dbStruct .mat (FORMATS.md 2.2): names (N, 1) object, utm (2, N) float64."""
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"dbStruct": {
        "whichSet": which,
        "dbImageFns": np.array(db_names, dtype=object).reshape(-1, 1),
        "utmDb": np.asarray(utm_db, dtype=np.float64).reshape(2, -1),
        "qImageFns": np.array(q_names, dtype=object).reshape(-1, 1),
        "utmQ": np.asarray(utm_q, dtype=np.float64).reshape(2, -1),
        "numImages": float(len(db_names)), "numQueries": float(len(q_names)),
        "posDistThr": 25.0, "posDistSqThr": 625.0, "nonTrivPosDistSqThr": 100.0,
    }})
    return path


def write_jpegs(root: Path, names, size=(32, 24)) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = np.full((size[1], size[0], 3), (i * 37) % 256, dtype=np.uint8)
        Image.fromarray(image).save(path)


# ---------------------------------------------------------------------------------------------
# MSLS: pandas-written CSVs (leading unnamed index column)

MSLS_POST = ",key,easting,northing,unique_cluster,control_panel,night,view_direction"
MSLS_RAW = ",key,lon,lat,ca,captured_at,pano"


def write_msls_subset(root: Path, city: str, subset: str, rows: list[dict]) -> Path:
    """One MSLS ``train_val/<city>/<subset>`` folder with images and both CSVs."""
    folder = root / "train_val" / city / subset
    (folder / "images").mkdir(parents=True, exist_ok=True)
    post = [MSLS_POST]
    raw = [MSLS_RAW]
    for i, r in enumerate(rows):
        post.append(f"{i},{r['key']},{r['e']},{r['n']},{i},0,{r.get('night', False)},"
                    f"{r.get('view', 'Forward')}")
        raw.append(f"{i},{r['key']},12.5,55.6,{r.get('ca', 0.0)},{r.get('date', '2018-05-27')},"
                   f"{r.get('pano', False)}")
        Image.fromarray(np.full((6, 8, 3), 90, dtype=np.uint8)).save(
            folder / "images" / f"{r['key']}.jpg")
    (folder / "postprocessed.csv").write_text("\n".join(post) + "\n", encoding="utf-8")
    (folder / "raw.csv").write_text("\n".join(raw) + "\n", encoding="utf-8")
    return folder
