"""A map's places as columns: one ``.npy`` per column, opened memory-mapped, paths read lazily.

A map of 10 million references cannot parse its ``places.csv`` (about 700 MB) each time it is
opened. :func:`write_columns` stores the same table in the map folder's ``columns/`` folder:

- ``xy.npy``: (N, 2) float64 positions (x, y in metres); ``yaw.npy``, ``timestamp.npy``: (N,)
  float64. The very values of places.csv (it writes ``repr(float)``, which round-trips).
- ``traversal.npy``, ``condition.npy``, ``split.npy``: (N,) int32 codes into the label lists
  of ``labels.json`` (``{"traversal": [...], "condition": [...], "split": [...]}``, each list
  in order of first appearance, so that ``conditions()`` and ``traversals()`` need no scan).
- ``path_offsets.npy``: (N + 1,) int64; ``path_bytes.npy``: (total,) uint8, the UTF-8 bytes of
  all image paths one after the other: path ``i`` is ``bytes[offsets[i]:offsets[i + 1]]``.

:func:`open_columns` maps every file read-only (``numpy.load(mmap_mode='r')``) and returns a
:class:`MappedPlaces`: the interface of :class:`~softloc.data.places.PlaceTable` that maps
use, where a column is only read when asked for and a path only when its row is. Opening
therefore costs the same for 1 k or 10 M rows. ``places.csv`` stays in the map as the
human-readable export; a map without ``columns/`` (written before) is read from its CSV.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from softloc.atomic import write_json, write_with
from softloc.data.places import PlacesError, PlaceTable

COLUMNS_DIR = "columns"
FLOAT_FILES: dict[str, str] = {"xy": "xy.npy", "yaw": "yaw.npy", "timestamp": "timestamp.npy"}
LABEL_COLUMNS: tuple[str, ...] = ("traversal", "condition", "split")
LABELS_FILE = "labels.json"
PATH_OFFSETS_FILE = "path_offsets.npy"
PATH_BYTES_FILE = "path_bytes.npy"
#: The files of ``columns/``, relative to the map folder (as the manifest lists them).
COLUMN_FILES: tuple[str, ...] = tuple(
    f"{COLUMNS_DIR}/{name}"
    for name in (*FLOAT_FILES.values(), *(f"{c}.npy" for c in LABEL_COLUMNS), LABELS_FILE,
                 PATH_OFFSETS_FILE, PATH_BYTES_FILE)
)
#: Rows encoded at a time by :func:`write_columns` (bounds its temporary memory).
CHUNK_ROWS = 262144


def _chunk_codes(values: np.ndarray, labels: dict[str, int]) -> np.ndarray:
    """int32 codes of ``values``; labels not yet in ``labels`` are added in order of first
    appearance (so codes number the labels as a scan of the whole column would)."""
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    for j in np.argsort(first, kind="stable"):
        labels.setdefault(str(uniques[j]), len(labels))
    local = np.array([labels[str(u)] for u in uniques], dtype=np.int32)
    return local[inverse.reshape(-1)]


def write_columns(places: PlaceTable | MappedPlaces, folder: str | os.PathLike[str]
                  ) -> list[str]:
    """Write ``places`` as ``folder/columns/*``; returns the written names (of
    :data:`COLUMN_FILES`, relative to ``folder``).

    ``folder`` is a map's build folder (renamed into place whole), so each file is written
    directly, :data:`CHUNK_ROWS` rows at a time (memory-mapped ``.npy`` files filled block by
    block): the temporary memory does not grow with the number of rows.
    """
    out = Path(folder) / COLUMNS_DIR
    out.mkdir(exist_ok=True)
    n = len(places)

    def column(name: str, dtype: type, shape: tuple[int, ...]) -> np.memmap:
        return np.lib.format.open_memmap(out / name, mode="w+", dtype=dtype, shape=shape)

    xy = column(FLOAT_FILES["xy"], np.float64, (n, 2))
    floats = {c: column(FLOAT_FILES[c], np.float64, (n,)) for c in ("yaw", "timestamp")}
    codes = {c: column(f"{c}.npy", np.int32, (n,)) for c in LABEL_COLUMNS}
    labels: dict[str, dict[str, int]] = {c: {} for c in LABEL_COLUMNS}
    for start in range(0, n, CHUNK_ROWS):
        end = min(start + CHUNK_ROWS, n)
        xy[start:end, 0] = places.x[start:end]
        xy[start:end, 1] = places.y[start:end]
        for c, array in floats.items():
            array[start:end] = getattr(places, c)[start:end]
        for c, array in codes.items():
            array[start:end] = _chunk_codes(np.asarray(getattr(places, c)[start:end]),
                                            labels[c])
    for array in (xy, *floats.values(), *codes.values()):
        array.flush()
    del xy, floats, codes
    write_json(out / LABELS_FILE, {c: list(labels[c]) for c in LABEL_COLUMNS})
    def encoded(start: int) -> list[bytes]:
        return [str(p).encode("utf-8") for p in places.path[start:start + CHUNK_ROWS]]

    offsets = np.zeros(len(places) + 1, dtype=np.int64)
    for start in range(0, len(places), CHUNK_ROWS):  # pass 1: the lengths
        lengths = [len(e) for e in encoded(start)]
        offsets[start + 1:start + 1 + len(lengths)] = offsets[start] + np.cumsum(lengths)
    with open(out / PATH_BYTES_FILE, "wb") as handle:  # pass 2: an .npy header, the bytes
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|u1", "fortran_order": False, "shape": (int(offsets[-1]),)})
        for start in range(0, len(places), CHUNK_ROWS):
            handle.write(b"".join(encoded(start)))
    with open(out / PATH_OFFSETS_FILE, "wb") as handle:
        np.save(handle, offsets, allow_pickle=False)
    return list(COLUMN_FILES)


def write_places_csv(places: PlaceTable | MappedPlaces, path: str | os.PathLike[str]) -> Path:
    """Write ``places`` as canonical places.csv (the text of
    :meth:`PlaceTable.to_csv_text`), :data:`CHUNK_ROWS` rows at a time, atomically: the text of
    10 M rows is never held whole."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            for start in range(0, len(places), CHUNK_ROWS):
                rows = np.arange(start, min(start + CHUNK_ROWS, len(places)))
                text = places.subset(rows).to_csv_text()
                handle.write(text if start == 0 else text.split("\n", 1)[1])

    return write_with(path, write)


def has_columns(listed: object) -> bool:
    """Whether a map's manifest lists its columns (``listed``: the manifest's file names)."""
    return all(name in listed for name in COLUMN_FILES)


def _rows(index: object, n: int) -> np.ndarray:
    """Row numbers chosen by a slice, a boolean mask or an integer array over ``n`` rows
    (without building an array of all n rows: a 10 M-row map indexes a few rows a query)."""
    if isinstance(index, slice):
        return np.arange(*index.indices(n))
    index = np.asarray(index)
    if index.dtype == bool:
        if index.shape != (n,):
            raise IndexError(f"boolean index of shape {index.shape} for {n} places")
        return np.flatnonzero(index)
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise IndexError(f"places are indexed by integers, a mask or a slice, not {index.dtype}")
    rows = index.astype(np.int64)
    rows = np.where(rows < 0, rows + n, rows)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"place index out of range for {n} places")
    return rows


class LazyPaths:
    """The image paths of a :class:`MappedPlaces`, decoded from UTF-8 only when indexed.

    Indexing with an int gives a ``str``; with a slice, a mask or an integer array, an
    ``ndarray`` of ``str`` (as a PlaceTable's ``path`` column would).
    """

    def __init__(self, offsets: np.ndarray, data: np.ndarray) -> None:
        self._offsets = offsets
        self._data = data

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _one(self, i: int) -> str:
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return bytes(self._data[start:end]).decode("utf-8")

    def __getitem__(self, index):  # noqa: ANN001, ANN204 - int, slice, mask or index array
        if isinstance(index, (int, np.integer)):
            n = len(self)
            i = int(index) + n if index < 0 else int(index)
            if not 0 <= i < n:
                raise IndexError(f"path index {index} out of range for {n} places")
            return self._one(i)
        rows = _rows(index, len(self))
        return np.array([self._one(int(i)) for i in rows.ravel()], dtype=str).reshape(
            rows.shape)

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self._one(i)

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001, ANN204 - numpy protocol
        everything = np.array(list(self), dtype=str)
        return everything if dtype is None else everything.astype(dtype)

    def tolist(self) -> list[str]:
        """Every path (reads them all)."""
        return list(self)


class MappedPlaces:
    """A map's places read from ``columns/`` on demand: what a map needs of a PlaceTable.

    ``x``, ``y``, ``xy``, ``yaw``, ``timestamp`` are read-only memory-mapped float64 arrays;
    ``traversal``, ``condition``, ``split`` are decoded from their codes the first time they
    are asked for; ``path`` is a :class:`LazyPaths`. :meth:`subset`, :meth:`where` and
    :meth:`to_table` give an ordinary :class:`PlaceTable` of the chosen rows.
    """

    def __init__(self, folder: Path, root: Path) -> None:
        self.folder = folder
        self.root = Path(root)

        def load(name: str) -> np.ndarray:
            try:
                return np.load(folder / name, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as error:
                raise PlacesError(f"{folder / name}: unreadable column ({error})") from None

        self.xy = load(FLOAT_FILES["xy"])
        self.yaw = load(FLOAT_FILES["yaw"])
        self.timestamp = load(FLOAT_FILES["timestamp"])
        self._codes = {c: load(f"{c}.npy") for c in LABEL_COLUMNS}
        try:
            labels = json.loads((folder / LABELS_FILE).read_text(encoding="utf-8"))
            self._labels = {c: np.array(labels[c], dtype=str) for c in LABEL_COLUMNS}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PlacesError(f"{folder / LABELS_FILE}: unreadable labels ({error})") from None
        self.path = LazyPaths(load(PATH_OFFSETS_FILE), load(PATH_BYTES_FILE))
        n = len(self.path)
        shapes = {"xy": (self.xy.shape, (n, 2)), "yaw": (self.yaw.shape, (n,)),
                  "timestamp": (self.timestamp.shape, (n,)),
                  **{c: (self._codes[c].shape, (n,)) for c in LABEL_COLUMNS}}
        for name, (shape, expected) in shapes.items():
            if shape != expected:
                raise PlacesError(f"{folder}: column {name} has shape {shape}, expected "
                                  f"{expected} (the {n} paths)")

    def __len__(self) -> int:
        return len(self.path)

    @property
    def x(self) -> np.ndarray:
        """(N,) x in metres (a view of ``xy``)."""
        return self.xy[:, 0]

    @property
    def y(self) -> np.ndarray:
        """(N,) y in metres (a view of ``xy``)."""
        return self.xy[:, 1]

    def _decoded(self, column: str) -> np.ndarray:
        return self._labels[column][np.asarray(self._codes[column])]

    @cached_property
    def traversal(self) -> np.ndarray:
        """(N,) traversal names (decoded on first use)."""
        return self._decoded("traversal")

    @cached_property
    def condition(self) -> np.ndarray:
        """(N,) conditions (decoded on first use)."""
        return self._decoded("condition")

    @cached_property
    def split(self) -> np.ndarray:
        """(N,) splits (decoded on first use)."""
        return self._decoded("split")

    def conditions(self) -> list[str]:
        """Distinct conditions in order of first appearance."""
        return self._labels["condition"].tolist()

    def traversals(self) -> list[str]:
        """Distinct traversals in order of first appearance."""
        return self._labels["traversal"].tolist()

    def image_path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        return self.root / self.path[int(i)]

    def subset(self, index: np.ndarray) -> PlaceTable:
        """Rows selected by a boolean mask or an integer index array, as a PlaceTable."""
        rows = _rows(index, len(self))
        return PlaceTable(
            path=self.path[rows], x=self.xy[rows, 0], y=self.xy[rows, 1], yaw=self.yaw[rows],
            timestamp=self.timestamp[rows],
            **{c: self._labels[c][self._codes[c][rows]] for c in LABEL_COLUMNS},
            root=self.root,
        )

    def where(self, split: str | None = None, condition: str | None = None,
              traversal: str | None = None) -> PlaceTable:
        """Rows matching every given label, as a PlaceTable."""
        mask = np.ones(len(self), dtype=bool)
        for column, label in (("split", split), ("condition", condition),
                              ("traversal", traversal)):
            if label is not None:
                known = np.flatnonzero(self._labels[column] == label)
                mask &= (self._codes[column] == known[0]) if known.size else False
        return self.subset(mask)

    def to_table(self) -> PlaceTable:
        """Every row as an ordinary PlaceTable (reads all columns and paths)."""
        return self.subset(np.arange(len(self)))

    def to_csv_text(self) -> str:
        """The table as canonical CSV text (as places.csv holds it)."""
        return self.to_table().to_csv_text()


def open_columns(folder: str | os.PathLike[str], root: str | os.PathLike[str]) -> MappedPlaces:
    """The places of the map in ``folder`` from its ``columns/`` (memory-mapped).

    Raises:
        PlacesError: a column is missing, unreadable or of the wrong length.
    """
    return MappedPlaces(Path(folder) / COLUMNS_DIR, Path(root))
