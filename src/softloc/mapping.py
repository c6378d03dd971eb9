"""The map: reference descriptors, their positions and a search index, kept in one folder.

A map folder holds four files, each written atomically, the manifest last:

- ``descriptors.npy``: (N, D) float32 or float16 L2-normalised descriptors, opened with
  ``mmap_mode='r'`` so that a map of millions of references opens without being read;
- ``places.csv``: the references' :class:`~softloc.data.places.PlaceTable` (paths, x, y, yaw,
  ...), row ``i`` describing descriptor ``i``;
- ``index.faiss``: the :class:`~softloc.index.DescriptorIndex` over the descriptors;
- ``manifest.json``: format version, the caller's model metadata, dimension, count, dtype,
  index kind, the SHA-256 of ``descriptors.npy`` and the creation time.

A folder without ``manifest.json`` is an incomplete map (a build that was interrupted), and
loading it fails. Loading never touches the images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from softloc.atomic import write_json, write_with
from softloc.data.places import PlacesError, PlaceTable, read_places, write_places
from softloc.index import (
    DescriptorIndex,
    DescriptorIndexError,
    as_float32_rows,
    default_nlist,
    squared_l2_from_ip,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DESCRIPTORS_FILE = "descriptors.npy"
PLACES_FILE = "places.csv"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
DTYPES: tuple[str, ...] = ("float32", "float16")
#: Largest deviation of a descriptor's norm from 1 accepted by :meth:`Map.build`.
NORM_TOLERANCE = 1e-2
#: Rows read at a time when checking or converting (possibly memory-mapped) descriptors.
CHUNK_ROWS = 65536
#: IVF training uses at most this many descriptors per cell (a random sample).
TRAIN_ROWS_PER_CELL = 256
_REBUILD = "rebuild it with `softloc map build`"


class MapError(ValueError):
    """A map cannot be built, loaded or searched; the message names the file and the fix."""


@dataclass(frozen=True)
class Localization:
    """Where one query is, according to the map.

    Attributes:
        x, y: estimated position in metres (the top-1 reference's position).
        yaw: estimated heading in radians (the top-1 reference's heading).
        indices: (k,) reference rows, best first.
        paths: (k,) reference image paths (relative to the map's image root).
        scores: (k,) inner products (cosine similarities) with the query.
        distances: (k,) squared Euclidean descriptor distances, ``2 - 2 * scores``.
    """

    x: float
    y: float
    yaw: float
    indices: np.ndarray
    paths: np.ndarray
    scores: np.ndarray
    distances: np.ndarray


def sha256_file(path: str | os.PathLike[str], block_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in blocks (never the whole file at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def _check_descriptors(descriptors: np.ndarray) -> None:
    """Raise MapError unless descriptors are (N, D), N > 0, finite and L2-normalised."""
    if descriptors.ndim != 2 or descriptors.shape[0] == 0 or descriptors.shape[1] == 0:
        raise MapError(f"descriptors must have shape (N, D) with N, D > 0, got "
                       f"{descriptors.shape}")
    if not np.issubdtype(descriptors.dtype, np.floating):
        raise MapError(f"descriptors must be floating point, got {descriptors.dtype}")
    for start in range(0, len(descriptors), CHUNK_ROWS):
        chunk = np.asarray(descriptors[start : start + CHUNK_ROWS], dtype=np.float32)
        bad_rows = np.flatnonzero(~np.all(np.isfinite(chunk), axis=1))
        if bad_rows.size:
            raise MapError(
                f"descriptor row {start + bad_rows[0]} holds NaN or infinite values "
                f"({bad_rows.size} such rows in this block); re-extract with a healthy model"
            )
        norms = np.linalg.norm(chunk, axis=1)
        off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if off.size:
            raise MapError(
                f"descriptor row {start + off[0]} has norm {norms[off[0]]:.4f}, not 1; the map "
                "searches by inner product: L2-normalise descriptors (x / ||x||) first"
            )


def _json_checked(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` as a JSON round trip, or a MapError saying which value does not serialise."""
    if not isinstance(meta, dict):
        raise MapError(f"model_meta must be a dict, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as error:
        raise MapError(
            f"model_meta must be JSON-serialisable (strings, numbers, lists, dicts): {error}"
        ) from None


class Map:
    """Reference descriptors + positions + index; build, save, load, search, localize.

    Build with :meth:`build` or open a folder with :meth:`load`; the constructor only
    assembles parts that are already consistent.

    Attributes:
        descriptors: (N, D) float32/float16 descriptors (a read-only memmap after load).
        places: the references, row i for descriptor i.
        index: the search index over ``descriptors``.
        model_meta: the caller's description of the model (name, checkpoint, whitening, ...).
        created: ISO-8601 UTC creation time.
    """

    def __init__(
        self,
        descriptors: np.ndarray,
        places: PlaceTable,
        index: DescriptorIndex,
        model_meta: dict[str, Any],
        created: str,
    ) -> None:
        if len(descriptors) != len(places) or index.ntotal != len(places):
            raise MapError(
                f"inconsistent map: {len(descriptors)} descriptors, {len(places)} places, "
                f"{index.ntotal} indexed; {_REBUILD}"
            )
        self.descriptors = descriptors
        self.places = places
        self.index = index
        self.model_meta = model_meta
        self.created = created

    # ----------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        descriptors: np.ndarray,
        places: PlaceTable,
        model_meta: dict[str, Any],
        index_kind: str = "flat",
        dtype: str = "float32",
        index_options: dict[str, int] | None = None,
        seed: int = 0,
    ) -> Map:
        """A map of ``places`` described by ``descriptors``.

        Args:
            descriptors: (N, D) L2-normalised descriptors, row i for ``places`` row i (may be
                a memmap; it is read in blocks).
            places: the N reference images.
            model_meta: JSON-serialisable description of the model (name, checkpoint,
                whitening, ...); stored in the manifest. A ``whitening`` key is also shown
                at the manifest's top level.
            index_kind: ``flat``, ``ivf`` or ``ivfpq`` (see :mod:`softloc.index`).
            dtype: storage dtype of ``descriptors.npy``, ``float32`` or ``float16`` (half
                the size; the index is built from the stored values so that a loaded map
                gives the same results).
            index_options: keyword arguments for :class:`DescriptorIndex` (nlist, m, nbits,
                nprobe); ``nlist`` defaults to :func:`~softloc.index.default_nlist` (N).
            seed: seed of the random sample the IVF cells are trained on.

        Raises:
            MapError: count mismatch, empty, NaN or un-normalised descriptors, unknown dtype,
                non-JSON metadata, bad index options.
        """
        if dtype not in DTYPES:
            raise MapError(f"unknown descriptor dtype {dtype!r}; choose one of {DTYPES}")
        descriptors = np.asarray(descriptors)
        if descriptors.ndim >= 1 and len(descriptors) != len(places):
            raise MapError(
                f"{len(descriptors)} descriptors but {len(places)} places; extract one "
                "descriptor per reference image, in the table's order"
            )
        _check_descriptors(descriptors)
        meta = _json_checked(model_meta)
        stored = descriptors.astype(dtype, copy=False)
        options = dict(index_options or {})
        if index_kind != "flat":
            options.setdefault("nlist", default_nlist(len(stored)))
        try:
            index = DescriptorIndex(stored.shape[1], kind=index_kind, **options)
            if index_kind != "flat":
                index.train(_training_sample(stored, index.nlist, seed))
            index.add(stored)
        except (DescriptorIndexError, TypeError) as error:
            raise MapError(f"cannot build the {index_kind} index: {error}") from None
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        logger.info("built a %s map of %d references, %d dims", index_kind, *stored.shape)
        return cls(stored, places, index, meta, created)

    # ----------------------------------------------------------------------------- files
    @property
    def dim(self) -> int:
        """Descriptor dimension D."""
        return int(self.descriptors.shape[1])

    def __len__(self) -> int:
        return len(self.places)

    def manifest(self, checksum: str) -> dict[str, Any]:
        """The manifest dict for a saved map whose descriptors.npy hashes to ``checksum``."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model_meta,
            "whitening": self.model_meta.get("whitening"),
            "dim": self.dim,
            "count": len(self),
            "dtype": str(self.descriptors.dtype),
            "index": {
                "kind": self.index.kind,
                "metric": self.index.metric,
                "nlist": self.index.nlist,
                "nprobe": self.index.nprobe,
                "m": self.index.m,
                "nbits": self.index.nbits,
            },
            "descriptors_sha256": checksum,
            "image_root": str(self.places.root),
            "created": self.created,
            "files": {
                "descriptors": DESCRIPTORS_FILE,
                "places": PLACES_FILE,
                "index": INDEX_FILE,
            },
        }

    def save(self, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the map into ``folder`` (created if needed); returns the folder.

        Each file is written atomically and the manifest last; when overwriting, the old
        manifest is removed first, so an interrupted save never leaves a manifest that
        describes other files.

        Raises:
            MapError: ``folder`` already holds a map and ``overwrite`` is false.
        """
        folder = Path(folder)
        manifest_path = folder / MANIFEST_FILE
        if manifest_path.exists():
            if not overwrite:
                raise MapError(
                    f"{folder} already holds a map; pass overwrite=True or choose another folder"
                )
            manifest_path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        descriptors_path = folder / DESCRIPTORS_FILE
        write_with(descriptors_path, lambda tmp: _save_npy(tmp, self.descriptors))
        write_places(self.places, folder / PLACES_FILE)
        self.index.save(folder / INDEX_FILE)
        write_json(manifest_path, self.manifest(sha256_file(descriptors_path)))
        logger.info("saved a map of %d references to %s", len(self), folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], verify: bool = False) -> Map:
        """Open a map folder written by :meth:`save`; descriptors and index stay on disk.

        Descriptors are a read-only ``np.memmap`` and the index is memory-mapped (read-only),
        so opening costs the places table and the manifest only.

        Args:
            folder: the map folder.
            verify: also recompute the SHA-256 of descriptors.npy (reads the whole file).

        Raises:
            MapError: missing folder or file, incomplete map (no manifest), unknown format
                version, corrupt or inconsistent files, checksum mismatch; the message names
                the file and says to rebuild the map.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise MapError(f"{folder}: no such map folder; build one with `softloc map build`")
        manifest = _read_manifest(folder / MANIFEST_FILE)
        for name in (DESCRIPTORS_FILE, PLACES_FILE, INDEX_FILE):
            if not (folder / name).is_file():
                raise MapError(f"{folder / name}: missing from the map; {_REBUILD}")
        descriptors_path = folder / DESCRIPTORS_FILE
        if verify:
            actual = sha256_file(descriptors_path)
            if actual != manifest["descriptors_sha256"]:
                raise MapError(
                    f"{descriptors_path}: checksum mismatch (the file changed after the map "
                    f"was built: {actual[:12]}... != {manifest['descriptors_sha256'][:12]}...); "
                    f"{_REBUILD}"
                )
        try:
            descriptors = np.load(descriptors_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise MapError(f"{descriptors_path}: unreadable ({error}); {_REBUILD}") from None
        expected = (manifest["count"], manifest["dim"])
        if descriptors.shape != expected or str(descriptors.dtype) != manifest["dtype"]:
            raise MapError(
                f"{descriptors_path}: holds {descriptors.shape} {descriptors.dtype}, the "
                f"manifest says {expected} {manifest['dtype']}; {_REBUILD}"
            )
        try:
            places = read_places(folder / PLACES_FILE)
        except PlacesError as error:
            raise MapError(f"{error}; {_REBUILD}") from None
        places = dataclasses.replace(places, root=Path(manifest.get("image_root", folder)))
        if len(places) != manifest["count"]:
            raise MapError(
                f"{folder / PLACES_FILE}: {len(places)} rows, the manifest says "
                f"{manifest['count']}; {_REBUILD}"
            )
        try:
            index = DescriptorIndex.load(folder / INDEX_FILE, mmap=True)
        except DescriptorIndexError as error:
            raise MapError(f"{error}; {_REBUILD}") from None
        if index.ntotal != manifest["count"] or index.dim != manifest["dim"]:
            raise MapError(
                f"{folder / INDEX_FILE}: {index.ntotal} vectors of {index.dim} dims, the "
                f"manifest says {manifest['count']} of {manifest['dim']}; {_REBUILD}"
            )
        return cls(descriptors, places, index, manifest["model"], manifest["created"])

    # ---------------------------------------------------------------------------- search
    def search(self, query_desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar references of each query, best first.

        Args:
            query_desc: (Q, D) or (D,) L2-normalised query descriptors from the map's model.
            k: neighbours per query; clamped to the number of references.

        Returns:
            ``(scores, indices)``: (Q, k') float32 inner products and (Q, k') int64 reference
            rows, ``k' = min(k, N)``. An IVF index may pad a row with -1 when the visited
            cells hold fewer than k' references.

        Raises:
            MapError: wrong dimension (a query from another model), NaN queries, k < 1.
        """
        query_desc = np.asarray(query_desc)
        if query_desc.ndim not in (1, 2) or query_desc.shape[-1] != self.dim:
            raise MapError(
                f"query descriptors have shape {query_desc.shape} but the map holds "
                f"{self.dim}-dim descriptors (model {self.model_meta.get('name', '?')!r}); "
                "extract queries with the model and whitening the map was built with"
            )
        try:
            queries = as_float32_rows(query_desc, self.dim, "query descriptors")
            return self.index.search(queries, k)
        except DescriptorIndexError as error:
            raise MapError(str(error)) from None

    def localize(self, query_desc: np.ndarray, k: int = 5) -> list[Localization]:
        """Position estimates of queries: the top-1 reference's pose, plus the top-k list.

        Args:
            query_desc: (Q, D) or (D,) query descriptors.
            k: references listed per query (clamped to the map size).

        Returns:
            One :class:`Localization` per query. Padding of an IVF index (-1) is dropped, so
            a list can be shorter than k.

        Raises:
            MapError: as :meth:`search`, or an IVF index that found no reference for a query
                (raise nprobe).
        """
        scores, indices = self.search(query_desc, k)
        results = []
        for row, (row_scores, row_indices) in enumerate(zip(scores, indices, strict=True)):
            found = row_indices >= 0
            if not found.any():
                raise MapError(
                    f"query {row}: the index found no reference in the cells it visited; "
                    "raise nprobe or use a flat index"
                )
            row_indices, row_scores = row_indices[found], row_scores[found]
            best = int(row_indices[0])
            results.append(
                Localization(
                    x=float(self.places.x[best]),
                    y=float(self.places.y[best]),
                    yaw=float(self.places.yaw[best]),
                    indices=row_indices,
                    paths=self.places.path[row_indices],
                    scores=row_scores,
                    distances=squared_l2_from_ip(row_scores),
                )
            )
        return results


def _training_sample(descriptors: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """At most ``TRAIN_ROWS_PER_CELL * nlist`` random rows (sorted, for sequential reads)."""
    budget = TRAIN_ROWS_PER_CELL * nlist
    if len(descriptors) <= budget:
        return np.asarray(descriptors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(descriptors), budget, replace=False))
    return np.asarray(descriptors[rows], dtype=np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (np.save on a name would append '.npy')."""
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest, or a MapError naming what is wrong."""
    if not path.is_file():
        raise MapError(
            f"{path}: missing; the map in {path.parent} is incomplete (a build was "
            f"interrupted or this is not a map folder); {_REBUILD}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise MapError(f"{path}: not valid JSON ({error}); {_REBUILD}") from None
    if not isinstance(manifest, dict):
        raise MapError(f"{path}: expected a JSON object; {_REBUILD}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise MapError(
            f"{path}: map format version {version!r}, this softloc reads {FORMAT_VERSION}; "
            f"{_REBUILD}"
        )
    required = ("model", "dim", "count", "dtype", "descriptors_sha256", "created")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise MapError(f"{path}: missing key(s) {', '.join(missing)}; {_REBUILD}")
    return manifest
