"""Oxford RobotCar from the extracted download: timestamps, raw Bayer images and the INS.

Layout (every tar extracted into one root, as the SDK's README says)::

    <root>/<date>/stereo.timestamps          "<timestamp_us> <chunk>" per line, no header
    <root>/<date>/stereo/centre/<ts>.png     1280x960 raw Bayer GBRG, 8-bit, one channel
    <root>/<date>/gps/ins.csv                NovAtel INS solution, 15 named columns

Positions are the INS northing/easting interpolated linearly in time between the two INS rows
that bracket each image timestamp; the heading is interpolated along the shorter arc of the
circle. A frame is dropped (and counted) when a bracketing row is not ``INS_SOLUTION_GOOD``,
when it lies outside the INS time span or across a gap in it, or when its drive is excluded.

Where we follow the authors (janinethoma/soft_contrastive_learning, ``prepare_data/002``):
the ``INS_SOLUTION_GOOD`` rule on both neighbouring rows, and the same drives and conditions
(``configs/datasets/robotcar_paper.yaml``). Where we differ on purpose: they take the two
INS rows *nearest* in time (which may lie on the same side of the image time, giving an
inverse-distance mean rather than an interpolation) and interpolate yaw without wrapping;
we take the bracketing rows and wrap the heading.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from softloc.data.csv_text import read_csv_text, read_text_file
from softloc.data.images import ImageError
from softloc.data.places import PlaceTable, normalise_split
from softloc.data.readers.geo import OXFORD, Area, ned_yaw_to_yaw
from softloc.data.readers.report import (
    DatasetError,
    Problem,
    ReadResult,
    drop_duplicate_timestamps,
)

#: Columns of ``gps/ins.csv`` in the order of the SDK's MATLAB reader; we read them by name.
INS_COLUMNS: tuple[str, ...] = (
    "timestamp", "ins_status", "latitude", "longitude", "altitude", "northing", "easting",
    "down", "utm_zone", "velocity_north", "velocity_east", "velocity_down", "roll", "pitch",
    "yaw",
)
_NEEDED_INS = ("timestamp", "ins_status", "northing", "easting", "utm_zone", "yaw")
INS_GOOD = "INS_SOLUTION_GOOD"
DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}$")
#: SDK camera folder -> SDK camera model name (``models/<name>.txt`` and ``_distortion_lut.bin``).
CAMERA_MODELS = {
    "stereo/centre": "stereo_narrow_left",
    "stereo/left": "stereo_wide_left",
    "stereo/right": "stereo_wide_right",
    "mono_left": "mono_left",
    "mono_right": "mono_right",
    "mono_rear": "mono_rear",
}


# ----------------------------------------------------------------------------------------------
# metadata files


def read_stereo_timestamps(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``stereo.timestamps``: (timestamps in microseconds int64, chunk numbers int).

    Raises:
        DatasetError: a line that is not two integers (the message names file and line).
    """
    path = Path(path)
    stamps, chunks = [], []
    for line_no, line in enumerate(read_text_file(path, DatasetError).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            stamps.append(int(tokens[0]))
            chunks.append(int(tokens[1]) if len(tokens) > 1 else 0)
        except ValueError:
            raise DatasetError(
                f"{path}, line {line_no}: expected '<timestamp_us> <chunk>' integers, got "
                f"{line.strip()!r}; re-extract the drive's stereo_centre tar"
            ) from None
    return np.asarray(stamps, dtype=np.int64), np.asarray(chunks, dtype=np.int64)


@dataclass(frozen=True)
class InsRecords:
    """The columns of ``ins.csv`` that we use, sorted by time."""

    timestamp: np.ndarray  # int64 microseconds, strictly increasing
    status: np.ndarray  # str
    northing: np.ndarray
    easting: np.ndarray
    yaw: np.ndarray  # radians, NED (clockwise from north)
    zone: np.ndarray  # str, e.g. '30U'


def read_ins(path: str | os.PathLike[str]) -> InsRecords:
    """Read ``gps/ins.csv`` by column name; rows are sorted by time, repeated times dropped.

    Raises:
        DatasetError: missing columns, no rows, or an unparsable number (file and line named).
    """
    path = Path(path)
    text = read_csv_text(path, DatasetError)
    header = text.header
    missing = [c for c in _NEEDED_INS if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)} in the header {header} (as read); "
            f"expected the RobotCar INS header {','.join(INS_COLUMNS)} (is this gps.csv or "
            f"rtk.csv instead of ins.csv?){text.separator_hint()}"
        )
    column = {c: header.index(c) for c in _NEEDED_INS}
    values: dict[str, list] = {c: [] for c in _NEEDED_INS}
    for line_no, row in zip(text.lines, text.rows, strict=True):
        try:
            values["timestamp"].append(int(row[column["timestamp"]]))
            for c in ("northing", "easting", "yaw"):
                values[c].append(float(row[column[c]]))
        except ValueError:
            raise DatasetError(
                f"{path}, line {line_no}: unparsable timestamp/northing/easting/yaw; "
                "re-extract the drive's gps tar"
            ) from None
        values["ins_status"].append(row[column["ins_status"]])
        values["utm_zone"].append(row[column["utm_zone"]])
    if not values["timestamp"]:
        raise DatasetError(f"{path}: the INS file has no rows; re-extract the drive's gps tar")
    stamps = np.asarray(values["timestamp"], dtype=np.int64)
    order = np.argsort(stamps, kind="stable")
    stamps = stamps[order]
    unique = np.concatenate([[True], np.diff(stamps) > 0])
    index = order[unique]
    return InsRecords(
        timestamp=stamps[unique],
        status=np.asarray(values["ins_status"], dtype=str)[index],
        northing=np.asarray(values["northing"], dtype=np.float64)[index],
        easting=np.asarray(values["easting"], dtype=np.float64)[index],
        yaw=np.asarray(values["yaw"], dtype=np.float64)[index],
        zone=np.asarray(values["utm_zone"], dtype=str)[index],
    )


@dataclass(frozen=True)
class InterpolatedPoses:
    """INS poses at image times. ``inside`` False where no bracketing rows exist."""

    easting: np.ndarray
    northing: np.ndarray
    yaw: np.ndarray  # radians in [0, 2 pi), the INS (NED) convention
    inside: np.ndarray  # bool: bracketed by INS rows no more than max_gap apart
    good: np.ndarray  # bool: both bracketing rows INS_SOLUTION_GOOD
    lower: np.ndarray  # int: index of the INS row at or before t (-1 if none)
    upper: np.ndarray  # int: index of the INS row after t (equal to lower at the last row)


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles mapped to [-pi, pi)."""
    return np.mod(np.asarray(angle) + np.pi, 2 * np.pi) - np.pi


def interpolate_ins(
    ins: InsRecords, timestamps: np.ndarray, max_gap_us: int = 1_000_000
) -> InterpolatedPoses:
    """Linear interpolation of position, circular of heading, at each image timestamp.

    With ``t0 <= t < t1`` the bracketing INS times and ``w = (t - t0) / (t1 - t0)``:
    position ``p0 + w (p1 - p0)``; heading ``yaw0 + w wrap(yaw1 - yaw0)`` modulo 2 pi, so that
    a turn through north (yaw 6.2 -> 0.1) passes through 0, not through pi. An image outside
    the INS span, or between rows more than ``max_gap_us`` apart, gets ``inside`` False.
    Time differences are taken in int64 before any float conversion (µs epochs need 51 bits).
    """
    t = np.asarray(timestamps, dtype=np.int64)
    ts = ins.timestamp
    upper = np.searchsorted(ts, t, side="right")
    lower = upper - 1
    at_last = (lower == len(ts) - 1) & (t == ts[-1])
    upper = np.where(at_last, lower, upper)
    inside = (lower >= 0) & (upper < len(ts))
    lo = np.clip(lower, 0, len(ts) - 1)
    hi = np.clip(upper, 0, len(ts) - 1)
    span = ts[hi] - ts[lo]
    inside &= span <= max_gap_us
    w = np.where(span > 0, (t - ts[lo]).astype(np.float64) / np.maximum(span, 1), 0.0)
    w = np.where(inside, w, np.nan)
    easting = ins.easting[lo] + w * (ins.easting[hi] - ins.easting[lo])
    northing = ins.northing[lo] + w * (ins.northing[hi] - ins.northing[lo])
    yaw = np.mod(ins.yaw[lo] + w * wrap_angle(ins.yaw[hi] - ins.yaw[lo]), 2 * np.pi)
    good = inside & (ins.status[lo] == INS_GOOD) & (ins.status[hi] == INS_GOOD)
    return InterpolatedPoses(
        easting, northing, yaw, inside, good, np.where(lower >= 0, lower, -1), hi
    )


# ----------------------------------------------------------------------------------------------
# images


def demosaic(raw: np.ndarray, pattern: str = "GBRG") -> np.ndarray:
    """Bilinear demosaic of a raw Bayer mosaic to float (H, W, 3) RGB.

    Uses ``colour_demosaicing.demosaicing_CFA_Bayer_bilinear``, the function the RobotCar SDK
    itself calls (``python/image.py``), so colours match the SDK's exactly.
    """
    with warnings.catch_warnings():  # the package imports scipy.ndimage.filters (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        from colour_demosaicing import demosaicing_CFA_Bayer_bilinear

    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise ValueError(f"a Bayer mosaic has one channel, got shape {raw.shape}")
    return np.asarray(demosaicing_CFA_Bayer_bilinear(raw.astype(np.float64), pattern.upper()))


def read_camera_model(models_dir: str | os.PathLike[str], camera: str) -> np.ndarray:
    """The SDK's undistortion look-up table for ``camera`` as (H*W, 2) float64 (x, y) pairs.

    Reads ``<models_dir>/<name>_distortion_lut.bin`` (float64, 2*H*W values: all x source
    coordinates, then all y) with ``<name>`` from :data:`CAMERA_MODELS`.

    Raises:
        DatasetError: unknown camera or missing / malformed LUT file.
    """
    if camera not in CAMERA_MODELS:
        raise DatasetError(f"unknown RobotCar camera {camera!r}; one of {sorted(CAMERA_MODELS)}")
    path = Path(models_dir) / f"{CAMERA_MODELS[camera]}_distortion_lut.bin"
    if not path.is_file():
        raise DatasetError(
            f"{path}: no distortion LUT; pass the SDK's models/ folder (it holds "
            f"{CAMERA_MODELS[camera]}.txt and {path.name}) or leave out --models"
        )
    lut = np.fromfile(path, dtype=np.float64)
    if lut.size == 0 or lut.size % 2:
        raise DatasetError(f"{path}: {lut.size} values, expected 2*H*W; download it again")
    return lut.reshape(2, -1).T


def undistort(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Resample an (H, W, C) image through the SDK's LUT (bilinear, zeros outside).

    Output pixel ``(r, c)`` takes the input at column ``lut[r*W + c, 0]`` and row
    ``lut[r*W + c, 1]``, as in the SDK's ``CameraModel.undistort``.
    """
    from scipy.ndimage import map_coordinates

    h, w = image.shape[:2]
    if h * w != lut.shape[0]:
        raise ValueError(
            f"image of {w}x{h} does not match the camera model's LUT of {lut.shape[0]} pixels; "
            "use the models of the same camera"
        )
    coords = lut[:, ::-1].T.reshape(2, h, w)  # (row, col) per output pixel
    channels = [map_coordinates(image[:, :, c], coords, order=1) for c in range(image.shape[2])]
    return np.stack(channels, axis=-1)


@dataclass
class BayerLoader:
    """Decode a RobotCar image: raw Bayer PNG -> demosaic -> optional undistort -> uint8 RGB.

    The final cast truncates, as the SDK's ``load_image`` does.
    """

    pattern: str = "GBRG"
    lut: np.ndarray | None = field(default=None, repr=False)

    def __call__(self, path: Path) -> np.ndarray:
        path = Path(path)
        if not path.is_file():
            raise ImageError(f"{path}: image not found; check that the drive's chunk tar was "
                             "extracted into the same root")
        try:
            with Image.open(path) as image:
                raw = np.asarray(image)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ImageError(f"{path}: cannot decode image ({error}); re-extract its tar") from None
        if raw.ndim != 2:
            raise ImageError(
                f"{path}: expected a one-channel raw Bayer image, got shape {raw.shape}; was it "
                "already demosaiced? use the vg or csv format for RGB images"
            )
        rgb = demosaic(raw, self.pattern)
        if self.lut is not None:
            try:
                rgb = undistort(rgb, self.lut)
            except ValueError as error:
                raise ImageError(f"{path}: {error}") from None
        return np.clip(rgb, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class DriveLabel:
    """Traversal name and condition of one drive."""

    traversal: str
    condition: str


@dataclass(frozen=True)
class RobotCarConfig:
    """Which drives to read and how to label them.

    Attributes:
        drives: date -> labels; the reference drive gets traversal ``reference``.
        excluded: dates never read (the authors' manual exclusions).
        only_listed: read only the drives in ``drives`` (else others get traversal = date).
        unlisted_condition: condition of drives not in ``drives``.
        camera: image folder inside a drive.
        bayer_pattern: the camera's Bayer pattern (stereo: GBRG, mono: RGGB).
    """

    drives: dict[str, DriveLabel] = field(default_factory=dict)
    excluded: tuple[str, ...] = ()
    only_listed: bool = False
    unlisted_condition: str = "unlabelled"
    camera: str = "stereo/centre"
    bayer_pattern: str = "GBRG"

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RobotCarConfig:
        known = {"drives", "excluded", "only_listed", "unlisted_condition", "camera",
                 "bayer_pattern", "dataset", "description"}
        unknown = set(values) - known
        if unknown:
            raise DatasetError(
                f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        drives = {}
        for date, label in (values.get("drives") or {}).items():
            if not isinstance(label, dict) or not {"traversal", "condition"} <= set(label):
                raise DatasetError(
                    f"{source}: drive {date} needs 'traversal' and 'condition', got {label!r}"
                )
            drives[str(date)] = DriveLabel(str(label["traversal"]), str(label["condition"]))
        return cls(
            drives=drives,
            excluded=tuple(str(d) for d in values.get("excluded") or ()),
            only_listed=bool(values.get("only_listed", False)),
            unlisted_condition=str(values.get("unlisted_condition", "unlabelled")),
            camera=str(values.get("camera", "stereo/centre")),
            bayer_pattern=str(values.get("bayer_pattern", "GBRG")),
        )


def dataset_config_path(name: str) -> Path:
    """Path of a packaged dataset configuration, e.g. ``robotcar_paper``."""
    return Path(__file__).resolve().parents[2] / "configs" / "datasets" / f"{name}.yaml"


def load_robotcar_config(name_or_path: str | os.PathLike[str] | None) -> RobotCarConfig:
    """A :class:`RobotCarConfig` from a YAML file or a packaged name (``robotcar_paper``)."""
    if name_or_path is None:
        return RobotCarConfig()
    path = Path(name_or_path)
    if not path.is_file():
        path = dataset_config_path(str(name_or_path))
    if not path.is_file():
        raise DatasetError(
            f"{name_or_path}: no such RobotCar config file or packaged config; try "
            "'robotcar_paper' or a YAML file with drives/excluded"
        )
    try:
        values = yaml.safe_load(read_text_file(path, DatasetError)) or {}
    except yaml.YAMLError as error:
        raise DatasetError(f"{path}: not valid YAML ({error}); fix the file") from None
    return RobotCarConfig.from_dict(values, str(path))


# ----------------------------------------------------------------------------------------------
# reader


def find_drives(root: Path) -> list[str]:
    """Drive folders (named by date) directly under ``root``, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and DATE_PATTERN.match(p.name))


def _read_drive(
    root: Path, date: str, label: DriveLabel, config: RobotCarConfig, area: Area,
    max_gap_us: int,
) -> tuple[PlaceTable | None, list[Problem]]:
    drive = root / date
    stamps_file = drive / "stereo.timestamps"
    ins_file = drive / "gps" / "ins.csv"
    for needed, what in ((stamps_file, "stereo_centre"), (ins_file, "gps")):
        if not needed.is_file():
            return None, [Problem("missing_metadata", str(needed),
                                  f"drive {date} skipped: extract {date}_{what}*.tar into {root}")]
    stamps, _ = read_stereo_timestamps(stamps_file)
    if len(stamps) == 0:
        return None, [Problem("missing_metadata", str(stamps_file), "no frames listed")]
    ins = read_ins(ins_file)
    poses = interpolate_ins(ins, stamps, max_gap_us)
    problems: list[Problem] = []
    n_out = int((~poses.inside).sum())
    if n_out:
        problems.append(Problem("no_position", str(ins_file),
                                f"{date}: frames outside the INS time span or across a gap",
                                rows=n_out))
    bad_ins = poses.inside & ~poses.good
    if bad_ins.any():
        neighbours = np.concatenate([poses.lower[bad_ins], poses.upper[bad_ins]])
        statuses = sorted(set(ins.status[neighbours].tolist()))
        problems.append(Problem("ins_not_good", str(ins_file),
                                f"{date}: neighbouring INS status in {statuses}",
                                rows=int(bad_ins.sum())))
    keep = poses.good.copy()
    lower = np.clip(poses.lower, 0, None)
    zone_ok = (ins.zone[lower] == area.zone) & (ins.zone[poses.upper] == area.zone)
    zone_ok &= area.contains_utm(poses.easting, poses.northing)
    wrong_zone = keep & ~zone_ok
    if wrong_zone.any():
        problems.append(Problem("unexpected_zone", str(ins_file),
                                f"{date}: utm_zone not {area.zone} or position outside Oxford",
                                rows=int(wrong_zone.sum())))
    keep &= zone_ok
    n = int(keep.sum())
    paths = np.array([f"{date}/{config.camera}/{t}.png" for t in stamps[keep]], dtype=str)
    table = PlaceTable(
        path=paths,
        x=poses.easting[keep],
        y=poses.northing[keep],
        yaw=ned_yaw_to_yaw(poses.yaw[keep]),
        timestamp=stamps[keep].astype(np.float64) / 1e6,
        traversal=np.full(n, label.traversal),
        condition=np.full(n, label.condition),
        split=np.full(n, "test"),
        root=root,
    )
    table, duplicates = drop_duplicate_timestamps(table, str(stamps_file))
    return table, problems + duplicates


def read_robotcar(
    root: str | os.PathLike[str],
    config: RobotCarConfig | str | os.PathLike[str] | None = None,
    drives: list[str] | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    max_gap_s: float = 1.0,
) -> ReadResult:
    """Read the drives under ``root`` (or ``root`` itself when it is one drive's folder).

    Args:
        root: the folder the RobotCar tars were extracted into.
        config: labels and exclusions (:class:`RobotCarConfig`, YAML path or packaged name).
        drives: read only these dates.
        models_dir: the SDK's ``models/`` folder, to undistort images as the authors did.
        split: split given to every row (use regions to split by area).
        max_gap_s: frames between INS rows further apart than this get no position.

    Raises:
        DatasetError: ``root`` holds no drive, or no drive gives a single usable frame.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; give the folder the RobotCar tars were "
                           "extracted into (it holds one <date> folder per drive)")
    if not isinstance(config, RobotCarConfig):
        config = load_robotcar_config(config)
    if DATE_PATTERN.match(root.name) and (root / "stereo.timestamps").is_file():
        drives = [root.name]
        root = root.parent
    available = find_drives(root)
    if not available:
        raise DatasetError(
            f"{root}: no drive folders named like 2014-12-02-15-30-08; give the folder the "
            "RobotCar tars were extracted into"
        )
    wanted = available if drives is None else [d for d in drives if d in available]
    problems = [Problem("missing_metadata", str(root / d), f"drive {d} not found under {root}")
                for d in (drives or []) if d not in available]
    tables = []
    for date in wanted:
        if date in config.excluded:
            problems.append(Problem("excluded_drive", str(root / date), date,
                                    rows=_count_lines(root / date / "stereo.timestamps")))
            continue
        label = config.drives.get(date)
        if label is None:
            if config.only_listed:
                problems.append(Problem("unlisted_drive", str(root / date), date,
                                        rows=_count_lines(root / date / "stereo.timestamps")))
                continue
            label = DriveLabel(date, config.unlisted_condition)
        table, drive_problems = _read_drive(
            root, date, label, config, OXFORD, int(round(max_gap_s * 1e6))
        )
        problems += drive_problems
        if table is not None and len(table):
            tables.append(table)
    if not tables:
        listed = "; ".join(f"{p.kind}: {p.file}" for p in problems[:5])
        raise DatasetError(
            f"{root}: no usable frame in {len(wanted)} drive(s) ({listed}); check that "
            "stereo.timestamps and gps/ins.csv are extracted for the drives you want"
        )
    table = PlaceTable.concat(tables)
    table = PlaceTable(**{**_columns(table), "split": np.full(len(table), normalise_split(split))},
                       root=root)
    lut = read_camera_model(models_dir, config.camera) if models_dir else None
    loader = BayerLoader(config.bayer_pattern, lut)
    zone = (OXFORD.zone_number, OXFORD.zone_letter)
    return ReadResult(table, problems, loader, "robotcar", True, zone)


def _columns(table: PlaceTable) -> dict[str, np.ndarray]:
    return {c: getattr(table, c) for c in
            ("path", "x", "y", "yaw", "timestamp", "traversal", "condition", "split")}


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        return sum(1 for line in handle if line.strip())


__all__ = [
    "BayerLoader", "DriveLabel", "InsRecords", "InterpolatedPoses", "RobotCarConfig",
    "demosaic", "find_drives", "interpolate_ins", "load_robotcar_config",
    "read_camera_model", "read_ins", "read_robotcar", "read_stereo_timestamps", "undistort",
    "wrap_angle",
]
