"""The table of places: one row per image, with its camera position and labels.

Every dataset reader produces a :class:`PlaceTable`; everything downstream (tuples, maps,
evaluation) reads only this table, never a dataset's own format. On disk it is one CSV,
``places.csv``, in the dataset root; image paths are relative to that root.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from softloc.atomic import write_text
from softloc.data.csv_text import stream_csv_text
from softloc.data.timestamps import MILLISECONDS_FROM, parse_timestamp

logger = logging.getLogger(__name__)

#: Columns of the canonical CSV, in order.
COLUMNS: tuple[str, ...] = (
    "path",
    "x",
    "y",
    "yaw",
    "timestamp",
    "traversal",
    "condition",
    "split",
)
_FLOAT_COLUMNS = ("x", "y", "yaw", "timestamp")
PLACES_FILE = "places.csv"
#: Rows of a places CSV parsed into arrays at a time (bounds the Python lists in memory).
READ_CHUNK_ROWS = 65536


class PlacesError(ValueError):
    """A table of places is malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class PlaceTable:
    """Images with positions (metres), heading (radians), time (seconds) and labels.

    Attributes:
        path: (N,) image paths relative to ``root``.
        x, y: (N,) position in metres (e.g. UTM easting, northing).
        yaw: (N,) heading in radians, counter-clockwise from the +x axis.
        timestamp: (N,) seconds.
        traversal: (N,) name of the drive the image belongs to.
        condition: (N,) appearance condition (overcast, night, ...).
        split: (N,) ``train``, ``val`` or ``test``.
        root: folder the paths are relative to.
    """

    path: np.ndarray
    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    timestamp: np.ndarray
    traversal: np.ndarray
    condition: np.ndarray
    split: np.ndarray
    root: Path = Path(".")

    def __post_init__(self) -> None:
        n = len(self.path)
        for f in fields(self):
            if f.name == "root":
                continue
            value = np.asarray(getattr(self, f.name))
            if f.name in _FLOAT_COLUMNS:
                value = value.astype(np.float64)
            else:
                value = value.astype(str)
            if value.shape != (n,):
                raise PlacesError(f"column '{f.name}' has shape {value.shape}, expected ({n},)")
            object.__setattr__(self, f.name, value)
        object.__setattr__(self, "root", Path(self.root))

    def __len__(self) -> int:
        return len(self.path)

    @property
    def xy(self) -> np.ndarray:
        """(N, 2) positions in metres."""
        return np.stack([self.x, self.y], axis=1)

    def image_path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        return self.root / self.path[i]

    def subset(self, index: np.ndarray) -> PlaceTable:
        """Rows selected by a boolean mask or an integer index array, in that order."""
        index = np.asarray(index)
        return PlaceTable(
            **{
                f.name: getattr(self, f.name)[index]
                for f in fields(self)
                if f.name != "root"
            },
            root=self.root,
        )

    def where(
        self,
        split: str | None = None,
        condition: str | None = None,
        traversal: str | None = None,
    ) -> PlaceTable:
        """Rows matching every given label."""
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            mask &= self.split == split
        if condition is not None:
            mask &= self.condition == condition
        if traversal is not None:
            mask &= self.traversal == traversal
        return self.subset(mask)

    def conditions(self) -> list[str]:
        """Distinct conditions in order of first appearance."""
        return list(dict.fromkeys(self.condition.tolist()))

    def traversals(self) -> list[str]:
        """Distinct traversals in order of first appearance."""
        return list(dict.fromkeys(self.traversal.tolist()))

    @classmethod
    def concat(cls, tables: list[PlaceTable]) -> PlaceTable:
        """Rows of several tables sharing one root."""
        if not tables:
            raise PlacesError("cannot concatenate an empty list of place tables")
        return cls(
            **{
                f.name: np.concatenate([getattr(t, f.name) for t in tables])
                for f in fields(cls)
                if f.name != "root"
            },
            root=tables[0].root,
        )

    def to_csv_text(self) -> str:
        """The table as canonical CSV text."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(len(self)):
            writer.writerow(
                [
                    self.path[i],
                    repr(float(self.x[i])),
                    repr(float(self.y[i])),
                    repr(float(self.yaw[i])),
                    repr(float(self.timestamp[i])),
                    self.traversal[i],
                    self.condition[i],
                    self.split[i],
                ]
            )
        return buffer.getvalue()


def write_places(table: PlaceTable, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` as canonical CSV, atomically."""
    return write_text(path, table.to_csv_text())


def read_places(
    path: str | os.PathLike[str], check_images: bool = False
) -> PlaceTable:
    """Read a canonical places CSV (or a dataset folder holding ``places.csv``).

    Text rules (encodings, byte-order marks, spaces after commas) are those of
    :mod:`softloc.data.csv_text`; timestamps may be seconds or any form of
    :func:`softloc.data.timestamps.parse_timestamp`. Split labels are case-insensitive
    (``Train`` is read as ``train``, and a warning names the file).

    Args:
        path: the CSV file, or the dataset root that holds ``places.csv``.
        check_images: also check that every image file exists.

    Raises:
        PlacesError: missing file or column, unparsable or NaN coordinates, missing images;
            the message names the file, the row and what to do.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PLACES_FILE
    if not path.is_file():
        raise PlacesError(
            f"{path}: no such places file; generate a dataset with `softloc town --out DIR` "
            "or point to the folder that holds places.csv"
        )
    text = stream_csv_text(path, PlacesError)
    missing = [c for c in COLUMNS if c not in text.header]
    if missing:
        raise PlacesError(
            f"{path}: missing column(s) {', '.join(missing)} in the header {text.header} (as "
            f"read); the header must hold {', '.join(COLUMNS)}{text.separator_hint()}"
        )
    position = {c: text.header.index(c) for c in COLUMNS}
    parts: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    for lines, rows in _chunks(text.records, READ_CHUNK_ROWS):
        for c in COLUMNS:
            cells = [row[position[c]] for row in rows]
            convert = _numbers if c in _FLOAT_COLUMNS else _labels
            parts[c].append(convert(path, lines, c, cells))
    if not parts["path"]:
        raise PlacesError(f"{path}: the table has a header but no rows")
    columns = {c: np.concatenate(parts.pop(c)) for c in COLUMNS}  # each chunk freed once joined
    columns["split"] = _case_folded_splits(path, columns["split"])
    table = PlaceTable(**columns, root=path.parent)
    if check_images:
        absent = [p for p in table.path if not (table.root / p).is_file()]
        if absent:
            raise PlacesError(
                f"{path}: {len(absent)} image(s) listed but not found under {table.root}, "
                f"e.g. {absent[0]}; regenerate the dataset or remove those rows"
            )
    return table


def _finite_cell(path: Path, line: int, column: str, value: str) -> float:
    """The number in one cell; a timestamp may also be ISO-8601 or epoch ms/us."""
    try:
        number = parse_timestamp(value) if column == "timestamp" else float(value)
    except ValueError as error:
        what = f" ({error})" if column == "timestamp" else ""
        raise PlacesError(
            f"{path}, line {line}: column '{column}' holds {value!r}, not a number{what}; fix "
            "or drop the row"
        ) from None
    if not math.isfinite(number):
        raise PlacesError(
            f"{path}, line {line}: column '{column}' is {value!r}; every image needs a "
            "finite position, heading and timestamp: drop or fix the row"
        )
    return number


def normalise_split(label: str) -> str:
    """A split label as softloc compares it: stripped and lower-case (``Train`` -> ``train``)."""
    return label.strip().lower()


def _case_folded_splits(path: Path, labels: np.ndarray) -> np.ndarray:
    distinct, inverse = np.unique(labels, return_inverse=True)
    folded = np.asarray([normalise_split(label) for label in distinct.tolist()], dtype=str)
    changed = sorted(a for a, b in zip(distinct.tolist(), folded.tolist(), strict=True) if a != b)
    if changed:
        logger.warning("%s: split labels %s read as %s (split names are case-insensitive)",
                       path, changed, sorted({normalise_split(c) for c in changed}))
    return folded[inverse.reshape(-1)]


def _chunks(records, size: int):
    """``(lines, rows)`` of up to ``size`` CSV records at a time."""
    lines: list[int] = []
    rows: list[list[str]] = []
    for line, values in records:
        lines.append(line)
        rows.append(values)
        if len(rows) == size:
            yield lines, rows
            lines, rows = [], []
    if rows:
        yield lines, rows


def _numbers(path: Path, lines: list[int], column: str, cells: list[str]) -> np.ndarray:
    """One numeric column of a chunk as float64; a bad cell raises, naming its line.

    numpy parses the plain decimals at once; a chunk it refuses (an ISO timestamp, a
    typo) and the cells it cannot take as they are (non-finite values, epoch milliseconds)
    go through :func:`_finite_cell`, one cell at a time.
    """
    try:
        values = np.asarray(cells, dtype=str).astype(np.float64)
    except ValueError:
        values = np.asarray([_finite_cell(path, line, column, cell)
                             for line, cell in zip(lines, cells, strict=True)], dtype=np.float64)
    odd = ~np.isfinite(values)
    if column == "timestamp":
        odd |= np.abs(values) >= MILLISECONDS_FROM
    for i in np.flatnonzero(odd):  # epoch ms or us -> seconds; NaN and inf raise
        values[i] = _finite_cell(path, lines[i], column, cells[i])
    return values


def _labels(path: Path, lines: list[int], column: str, cells: list[str]) -> np.ndarray:
    """One text column of a chunk; an empty cell raises, naming its line."""
    values = np.asarray(cells, dtype=str)
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise PlacesError(f"{path}, line {lines[empty[0]]}: column '{column}' is empty; fill "
                          "it or drop the row")
    return values
