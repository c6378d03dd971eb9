"""Pittsburgh 30k / 250k from the NetVLAD release: a dbStruct ``.mat`` plus the image folders.

Layout::

    <root>/000 ... 010/<pano>_pitch<1|2>_yaw<1..12>.jpg          database (dbImageFns)
    <root>/queries_real/000 .../<pano>_pitch<1|2>_yaw<1..12>.jpg  queries  (qImageFns)
    <root>/datasets/pitts30k_{train,val,test}.mat                  dbStruct

``dbStruct`` (Relja Arandjelović's ``dbBase.m``) holds whichSet, dbImageFns, utmDb (2, N:
easting; northing, zone 17T), qImageFns, utmQ, numImages, numQueries, posDistThr (25 m),
posDistSqThr and nonTrivPosDistSqThr. Database rows get traversal ``reference``, queries
``query``; the split is whichSet. The authors' test protocol options: drop database images
farther than 100 m from every query, keep only pitch-1 views.

Pittsburgh gives no capture time (timestamp 0) and no compass heading: ``yaw`` is the crop's
index around its panorama, ``(k - 1) * 30`` degrees for ``yaw<k>``, relative to the panorama.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softloc.data.places import PlaceTable
from softloc.data.readers.geo import PITTSBURGH
from softloc.data.readers.report import DatasetError, Problem, ReadResult

DBSTRUCT_FIELDS: tuple[str, ...] = (
    "whichSet", "dbImageFns", "utmDb", "qImageFns", "utmQ", "numImages", "numQueries",
    "posDistThr", "posDistSqThr", "nonTrivPosDistSqThr",
)
QUERY_FOLDER = "queries_real"
REDOWNLOAD = ("download the NetVLAD dataset specification again (its datasets/ folder holds "
              "pitts30k_{train,val,test}.mat) and check its size")
_VIEW = re.compile(r"_pitch(\d+)_yaw(\d+)")


@dataclass(frozen=True)
class DbStruct:
    """The content of a NetVLAD dbStruct; coordinates as (N, 2) easting, northing."""

    which_set: str
    db_names: list[str]
    utm_db: np.ndarray
    q_names: list[str]
    utm_q: np.ndarray
    pos_dist_thr: float
    non_triv_pos_dist_sq_thr: float


def _names(value: np.ndarray, path: Path, field: str) -> list[str]:
    try:
        return [str(np.asarray(v).ravel()[0]) for v in np.asarray(value, dtype=object).ravel()]
    except (IndexError, TypeError):
        raise DatasetError(f"{path}: dbStruct.{field} is not a list of file names") from None


def _utm(value: np.ndarray, n: int, path: Path, field: str) -> np.ndarray:
    utm = np.asarray(value, dtype=np.float64)
    if utm.shape == (2, n):
        return utm.T.copy()
    if n == 0 and utm.size == 0:
        return np.zeros((0, 2))
    raise DatasetError(
        f"{path}: dbStruct.{field} has shape {utm.shape}, expected (2, {n}) = "
        "[easting; northing] per image; is this a NetVLAD dbStruct file?"
    )


def read_dbstruct(path: str | os.PathLike[str]) -> DbStruct:
    """Read a NetVLAD ``.mat`` dbStruct (MATLAB v5, as released), by field name or position.

    Raises:
        DatasetError: not a .mat file, no ``dbStruct``, wrong shapes or counts.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file; give the dbStruct .mat, e.g. "
                           "Pittsburgh250k/datasets/pitts30k_test.mat")
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(f"{path}: the file is empty (0 bytes), an interrupted download or "
                           f"copy; {REDOWNLOAD}")
    try:
        mat = loadmat(path)
    except (MatReadError, ValueError, OSError, EOFError, NotImplementedError, TypeError,
            IndexError, KeyError, zlib.error) as error:
        raise DatasetError(f"{path}: cannot read as a MATLAB v5 .mat file ({error}; "
                           f"{size} bytes: truncated or not a .mat file); {REDOWNLOAD}") from None
    if "dbStruct" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        if not keys:
            raise DatasetError(f"{path}: a .mat header but no variable ({size} bytes): the file "
                               f"is truncated; {REDOWNLOAD}")
        raise DatasetError(f"{path}: no 'dbStruct' variable (found {keys}); give one of the "
                           "NetVLAD pitts30k_*/pitts250k_* .mat files")
    struct = mat["dbStruct"]
    names = struct.dtype.names or ()
    if set(DBSTRUCT_FIELDS[:5]) <= set(names):
        value = {f: struct[f].item() for f in names}
    else:
        items = struct.item()
        if len(items) < 5:
            raise DatasetError(f"{path}: dbStruct has {len(items)} fields, expected 10")
        value = dict(zip(DBSTRUCT_FIELDS, items, strict=False))
    db_names = _names(value["dbImageFns"], path, "dbImageFns")
    q_names = _names(value["qImageFns"], path, "qImageFns")
    utm_db = _utm(value["utmDb"], len(db_names), path, "utmDb")
    utm_q = _utm(value["utmQ"], len(q_names), path, "utmQ")
    for field, names_, count in (("numImages", db_names, "dbImageFns"),
                                 ("numQueries", q_names, "qImageFns")):
        if field in value and int(np.asarray(value[field]).item()) != len(names_):
            raise DatasetError(f"{path}: {field} = {np.asarray(value[field]).item()} but "
                               f"{count} lists {len(names_)} files; the file is inconsistent")

    def scalar(field: str, default: float) -> float:
        return float(np.asarray(value[field]).item()) if field in value else default

    return DbStruct(
        which_set=str(np.asarray(value["whichSet"]).ravel()[0]),
        db_names=db_names, utm_db=utm_db, q_names=q_names, utm_q=utm_q,
        pos_dist_thr=scalar("posDistThr", 25.0),
        non_triv_pos_dist_sq_thr=scalar("nonTrivPosDistSqThr", 100.0),
    )


def view_of(name: str) -> tuple[int, int] | None:
    """(pitch, yaw) indices from a file name such as ``000829_pitch1_yaw3.jpg``."""
    match = _VIEW.search(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def read_pittsburgh(
    mat_path: str | os.PathLike[str],
    images_root: str | os.PathLike[str] | None = None,
    max_db_distance: float | None = None,
    pitch1_only: bool = False,
) -> ReadResult:
    """Read a NetVLAD dbStruct as a table of places.

    Args:
        mat_path: the ``.mat`` file.
        images_root: the dataset folder holding ``000/...`` and ``queries_real/``; by default the
            folder above ``datasets/`` when the .mat lies there, else the .mat's folder.
        max_db_distance: drop database images farther than this (m) from every query
            (the authors' test protocol uses 100 m); None keeps all.
        pitch1_only: keep only ``pitch1`` views (database and queries).
    """
    mat_path = Path(mat_path)
    db = read_dbstruct(mat_path)
    if images_root is None:
        parent = mat_path.parent
        images_root = parent.parent if parent.name == "datasets" else parent
    root = Path(images_root)
    paths = [n for n in db.db_names] + [f"{QUERY_FOLDER}/{n}" for n in db.q_names]
    xy = np.concatenate([db.utm_db, db.utm_q])
    is_query = np.arange(len(paths)) >= len(db.db_names)
    views = [view_of(p) for p in paths]
    yaw = np.array([np.radians(30.0 * (v[1] - 1)) if v else 0.0 for v in views])
    problems: list[Problem] = []
    keep = np.ones(len(paths), dtype=bool)

    def drop(mask: np.ndarray, kind: str, detail: str) -> None:
        mask = mask & keep
        if mask.any():
            examples = ", ".join(np.asarray(paths, dtype=object)[mask][:3])
            problems.append(Problem(kind, str(mat_path), f"{detail}, e.g. {examples}",
                                    rows=int(mask.sum())))
            keep[:] &= ~mask

    drop(~np.isfinite(xy).all(axis=1), "no_position", "NaN coordinates")
    drop(~PITTSBURGH.contains_utm(xy[:, 0], xy[:, 1]), "unexpected_zone",
         f"outside Pittsburgh in zone {PITTSBURGH.zone}")
    if pitch1_only:
        drop(np.array([v is not None and v[0] != 1 for v in views]), "not_pitch1", "pitch 2")
    if max_db_distance is not None and (keep & is_query).any():
        from scipy.spatial import cKDTree

        distance, _ = cKDTree(xy[keep & is_query]).query(np.where(np.isfinite(xy), xy, 0.0))
        drop(~is_query & (distance > max_db_distance), "far_from_queries",
             f"more than {max_db_distance:g} m from every query")
    n = int(keep.sum())
    if n == 0:
        raise DatasetError(f"{mat_path}: no image left after checks ({problems}); check the file")
    table = PlaceTable(
        path=np.asarray(paths, dtype=object)[keep].astype(str),
        x=xy[keep, 0], y=xy[keep, 1], yaw=yaw[keep], timestamp=np.zeros(n),
        traversal=np.where(is_query[keep], "query", "reference"),
        condition=np.full(n, "all"),
        split=np.full(n, db.which_set),
        root=root,
    )
    zone = (PITTSBURGH.zone_number, PITTSBURGH.zone_letter)
    return ReadResult(table, problems, dataset="pittsburgh", has_timestamps=False, zone=zone)
