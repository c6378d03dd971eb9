"""The map: reference descriptors, their positions and a search index, kept in one folder.

A map folder holds these files, the manifest written last:

- ``descriptors.npy``: (N, D) float32 or float16 L2-normalised descriptors, opened with
  ``mmap_mode='r'`` so that a map of millions of references opens without being read;
- ``places.csv``: the references' :class:`~softloc.data.places.PlaceTable` (paths, x, y, yaw,
  ...), row ``i`` describing descriptor ``i``;
- ``index.faiss``: the :class:`~softloc.index.DescriptorIndex` over the descriptors;
- ``model.safetensors`` + ``model.json`` (optional, added by :func:`softloc.localize.build_map`):
  the model that described the references;
- ``manifest.json``: format version, the caller's model metadata, dimension, count, dtype,
  index kind, the absolute image root, the creation time, and the size and SHA-256 of every
  other file of the map.

A map is complete exactly when its folder exists under its name: :meth:`Map.save` writes every
file into a hidden sibling folder and renames it into place once the manifest is written (the
old map is moved aside first and removed after). A kill at any moment therefore leaves either
the old map or the new one, never a mix; a kill between the two renames leaves the old map
hidden beside its name, and the next load or save renames it back.

:meth:`Map.load` checks the size of every file against the manifest and the SHA-256 of all but
the descriptors and the files over :data:`LOAD_CHECKSUM_MAX_BYTES` that grow with the map
(places, columns and index of a small map; the model, always);
the descriptors (which may be huge and stay memory-mapped) and large files are checksummed
only with ``verify=True``, so that a map of millions of references opens in well under a
second. Loading never touches the images.

The places are also stored as columns (``columns/``, :mod:`softloc.map_columns`), which a load
maps instead of parsing places.csv; a map written before them is read from its places.csv.
Maps larger than memory are written by :mod:`softloc.streamed_build`, which fills
``descriptors.npy`` in the build folder (:func:`new_staging`) batch by batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from softloc.atomic import (
    remove_stale_temporaries,
    remove_stale_temporaries_in,
    stale_temporaries,
    temporary_prefix,
    usual_permissions,
    write_json,
)
from softloc.data.places import PlacesError, PlaceTable, read_places
from softloc.index import (
    DescriptorIndex,
    DescriptorIndexError,
    as_float32_rows,
    default_nlist,
    squared_l2_from_ip,
)
from softloc.map_columns import (
    COLUMNS_DIR,
    has_columns,
    open_columns,
    write_columns,
    write_places_csv,
)

logger = logging.getLogger(__name__)

#: Version 2 added the size and SHA-256 of every file (``files``); version 1 maps are refused.
FORMAT_VERSION = 2
DESCRIPTORS_FILE = "descriptors.npy"
PLACES_FILE = "places.csv"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
#: The model that described the references (added by :func:`softloc.localize.build_map`).
MODEL_FILES: tuple[str, ...] = ("model.safetensors", "model.json")
#: Every file a map folder may hold; a folder with anything else is not replaced by a save.
MAP_FILES: tuple[str, ...] = (DESCRIPTORS_FILE, PLACES_FILE, INDEX_FILE, *MODEL_FILES,
                              MANIFEST_FILE, COLUMNS_DIR)
#: Files that grow with the map (all but the model's) and are larger than this are checked by
#: size only at load (SHA-256 with ``verify=True``), so that opening costs the same at any size.
LOAD_CHECKSUM_MAX_BYTES = 4 << 20
#: Suffixes of the hidden siblings of a map folder during a save: the new map being written,
#: and the old map moved aside while the new one is renamed into place.
STAGING_SUFFIX = ".build"
ASIDE_SUFFIX = ".old"
#: Tests only: ``map:<stage>`` in this variable makes :meth:`Map.save` kill its own process at
#: that stage (``descriptors``, ``files``, ``manifest``, ``aside``), to test what a kill leaves.
KILL_POINT_ENV = "SOFTLOC_TEST_KILL_AT"
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
        folder: the folder it was loaded from (None for a map built in memory).
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
        self.folder: Path | None = None

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
            index_kind: ``flat``, ``ivf``, ``ivfpq`` or ``hnsw`` (see :mod:`softloc.index`).
            dtype: storage dtype of ``descriptors.npy``, ``float32`` or ``float16`` (half
                the size; the index is built from the stored values so that a loaded map
                gives the same results).
            index_options: keyword arguments for :class:`DescriptorIndex` (nlist, m, nbits,
                nprobe, hnsw_m, ef_search); ``nlist`` defaults to
                :func:`~softloc.index.default_nlist` (N).
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
        if index_kind in ("ivf", "ivfpq"):
            options.setdefault("nlist", default_nlist(len(stored)))
        try:
            index = DescriptorIndex(stored.shape[1], kind=index_kind, **options)
            if index_kind in ("ivf", "ivfpq"):
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

    def manifest(self, files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The manifest dict of a saved map whose files have these ``{"bytes", "sha256"}``."""
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
                "hnsw_m": self.index.hnsw_m,
                "ef_search": self.index.ef_search,
            },
            "descriptors_sha256": files[DESCRIPTORS_FILE]["sha256"],
            "image_root": os.path.abspath(self.places.root),
            "created": self.created,
            "files": {name: dict(record) for name, record in files.items()},
        }

    def save(
        self,
        folder: str | os.PathLike[str],
        overwrite: bool = False,
        model_files: Mapping[str, str | os.PathLike[str]] | None = None,
        staging: Path | None = None,
    ) -> Path:
        """Write the map into ``folder``; returns the folder.

        Every file is written into a hidden sibling folder, the manifest (sizes and checksums
        of the others) last, and that folder is then renamed to ``folder``; an existing map is
        moved aside just before and removed just after. A kill or a write error at any moment
        leaves the old map as it was (see the module docstring).

        Args:
            folder: the map folder (its parent is created if needed).
            overwrite: replace a map already in ``folder``.
            model_files: files copied into the map, by name (one of :data:`MODEL_FILES`).
            staging: the build folder of ``folder`` (:func:`new_staging`) when the caller has
                already written ``descriptors.npy`` into it (a streamed build); it is renamed
                into place, or removed if the save fails.

        Raises:
            MapError: ``folder`` holds a map and ``overwrite`` is false, holds files that are
                not a map's, is a file; or a write failed (disk full, read-only): the message
                names the path and the reason, and the old map is unchanged.
        """
        folder = Path(os.path.abspath(folder))  # ``.`` or ``x/..`` have no name to rename
        if folder.is_symlink():
            folder = folder.resolve()
        extras = {name: Path(source) for name, source in (model_files or {}).items()}
        unknown = sorted(set(extras) - set(MODEL_FILES))
        if unknown:
            raise MapError(f"cannot add {unknown} to a map; it holds {list(MODEL_FILES)} only")
        absent = [str(source) for source in extras.values() if not source.is_file()]
        if absent:
            raise MapError(f"{absent[0]}: no such file to copy into the map; give a model "
                           "written by `softloc train` (its .safetensors and .json side by side)")
        recover_interrupted_save(folder)
        check_map_target(folder, overwrite=overwrite)
        aside: Path | None = None
        try:
            if staging is None:
                staging = new_staging(folder)
                _save_npy(staging / DESCRIPTORS_FILE, self.descriptors)
            _kill_point("descriptors")
            write_places_csv(self.places, staging / PLACES_FILE)
            columns = write_columns(self.places, staging)
            self.index.save(staging / INDEX_FILE)
            for name, source in extras.items():
                shutil.copyfile(source, staging / name)
            _kill_point("files")
            names = [DESCRIPTORS_FILE, PLACES_FILE, *columns, INDEX_FILE, *extras]
            write_json(staging / MANIFEST_FILE,
                       self.manifest({name: file_record(staging / name) for name in names}))
            _kill_point("manifest")
            if folder.exists():
                aside = folder.parent / (
                    f"{temporary_prefix(folder)}{uuid.uuid4().hex[:8]}{ASIDE_SUFFIX}"
                )
                os.rename(folder, aside)
                _kill_point("aside")
            os.rename(staging, folder)
            staging = None
        except OSError as error:
            where = error.filename or folder
            raise MapError(
                f"{where}: cannot write the map ({error.strerror or error}); nothing was "
                f"replaced{' (the old map is unchanged)' if aside or folder.exists() else ''}. "
                "Free space on that disk or choose a writable --out"
            ) from error
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if aside is not None:
                if folder.exists():
                    shutil.rmtree(aside, ignore_errors=True)
                else:
                    _restore(aside, folder)
        logger.info("saved a map of %d references to %s", len(self), folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], verify: bool = False) -> Map:
        """Open a map folder written by :meth:`save`; descriptors and index stay on disk.

        Descriptors are a read-only ``np.memmap`` and the index is memory-mapped (read-only).
        Every file's size is checked against the manifest, and the SHA-256 of every file but
        the descriptors (read once, in blocks); stale temporaries of killed writers are removed
        and a map left aside by a killed save is renamed back (best effort).

        Args:
            folder: the map folder.
            verify: also recompute the SHA-256 of descriptors.npy (reads the whole file).

        Raises:
            MapError: missing folder or file, incomplete map (no manifest), unknown format
                version, a file whose size or checksum differs from the manifest, corrupt or
                inconsistent files; the message names the file and says to rebuild the map.
        """
        folder = Path(folder)
        recover_interrupted_save(folder)
        if not folder.is_dir():
            raise MapError(f"{folder}: no such map folder; build one with `softloc map build`")
        manifest = _read_manifest(folder / MANIFEST_FILE)
        records = manifest["files"]
        for name in (DESCRIPTORS_FILE, PLACES_FILE, INDEX_FILE, *records):
            if not (folder / name).is_file():
                raise MapError(f"{folder / name}: missing from the map; {_REBUILD}")
            if name not in records:
                raise MapError(f"{folder / MANIFEST_FILE}: lists no checksum of {name}; "
                               f"{_REBUILD}")
        for name, record in records.items():
            small = record.get("bytes", 0) <= LOAD_CHECKSUM_MAX_BYTES or name in MODEL_FILES
            _check_file(folder / name, record,
                        checksum=verify or (name != DESCRIPTORS_FILE and small))
        descriptors_path = folder / DESCRIPTORS_FILE
        try:
            descriptors = np.load(descriptors_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise MapError(f"{descriptors_path}: unreadable ({error}); {_REBUILD}") from None
        expected = (manifest["count"], manifest["dim"])
        if descriptors.shape != expected or str(descriptors.dtype) != manifest["dtype"]:
            raise MapError(
                f"{descriptors_path}: holds {descriptors.shape} {descriptors.dtype}, the "
                f"manifest says {expected} {manifest['dtype']}; {_REBUILD}"
            )
        root = Path(manifest.get("image_root", folder))
        try:
            if has_columns(records):
                places = open_columns(folder, root)
            else:  # a map written before the columns: its places.csv, read once
                places = read_places(folder / PLACES_FILE)
                places = dataclasses.replace(places, root=root)
        except PlacesError as error:
            raise MapError(f"{error}; {_REBUILD}") from None
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
        the_map = cls(descriptors, places, index, manifest["model"], manifest["created"])
        the_map.folder = folder.resolve()
        return the_map

    @classmethod
    def open(cls, folder: str | os.PathLike[str], verify: bool = False) -> Map:
        """The map saved in ``folder`` (the same as :meth:`load`; the name of the public API)."""
        return cls.load(folder, verify=verify)

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


def new_staging(folder: str | os.PathLike[str]) -> Path:
    """A new hidden build folder beside the map folder ``folder`` (named by this process), to
    be filled and given to :meth:`Map.save` (or removed by the caller if the build fails)."""
    folder = Path(os.path.abspath(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=temporary_prefix(folder), suffix=STAGING_SUFFIX,
                                    dir=folder.parent))
    usual_permissions(staging, directory=True)
    return staging


def _training_sample(descriptors: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """At most ``TRAIN_ROWS_PER_CELL * nlist`` random rows (sorted, for sequential reads)."""
    budget = TRAIN_ROWS_PER_CELL * nlist
    if len(descriptors) <= budget:
        return np.asarray(descriptors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(descriptors), budget, replace=False))
    return np.asarray(descriptors[rows], dtype=np.float32)


def file_record(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file, as the manifest lists it."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _check_file(path: Path, record: Mapping[str, Any], checksum: bool) -> None:
    """Raise MapError unless ``path`` has the manifest's size (and SHA-256, if ``checksum``)."""
    size = path.stat().st_size
    if size != record.get("bytes"):
        raise MapError(
            f"{path}: {size} bytes, the manifest says {record.get('bytes')} (the file was "
            f"changed, truncated or replaced after the map was built); {_REBUILD}"
        )
    if checksum:
        actual = sha256_file(path)
        if actual != record.get("sha256"):
            raise MapError(
                f"{path}: checksum mismatch (the file changed after the map was built: "
                f"{actual[:12]}... != {str(record.get('sha256'))[:12]}...); {_REBUILD}"
            )


def check_map_target(folder: str | os.PathLike[str], overwrite: bool = True) -> None:
    """Raise MapError unless a map may be saved as ``folder``.

    ``folder`` may be missing, empty, or hold map files only (:data:`MAP_FILES`; hidden files
    do not count): a save replaces the whole folder, so anything else in it would be lost.

    Raises:
        MapError: ``folder`` is a file, holds other files, or holds a map and ``overwrite`` is
            false; nothing has been written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MapError(f"{folder} is a file, not a folder; choose another --out")
    if not folder.is_dir():
        return
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    foreign = [n for n in names if n not in MAP_FILES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise MapError(
            f"{folder} holds files that are not part of a map ({shown}); nothing was written. "
            "Choose a new or empty folder for --out"
        )
    if MANIFEST_FILE in names and not overwrite:
        raise MapError(
            f"{folder} already holds a map; pass overwrite=True or choose another folder"
        )


def recover_interrupted_save(folder: str | os.PathLike[str]) -> None:
    """Clean up after a save that was killed: best effort, never raises OSError.

    A map moved aside by a save killed before the new one was renamed in is renamed back when
    ``folder`` is missing; other leftovers of dead writers (half-written new maps, old maps
    aside, temporaries of single files) are removed. Leftovers of a live writer are kept.
    """
    folder = Path(folder)
    try:
        asides = stale_temporaries(folder, ASIDE_SUFFIX)
        if not folder.exists():
            complete = [p for p in asides if (p / MANIFEST_FILE).is_file()]
            if complete:
                newest = max(complete, key=lambda p: p.stat().st_mtime)
                os.rename(newest, folder)
                logger.warning("%s: restored the map a killed rebuild had moved aside (%s)",
                               folder, newest.name)
        remove_stale_temporaries(folder, ASIDE_SUFFIX)
        remove_stale_temporaries(folder, STAGING_SUFFIX)
        if folder.is_dir():
            remove_stale_temporaries_in(folder)
    except OSError as error:
        logger.debug("could not clean up after an interrupted save of %s: %s", folder, error)


def _restore(aside: Path, folder: Path) -> None:
    """Rename the old map back after a failed save; if even that fails, say where it is."""
    try:
        os.rename(aside, folder)
    except OSError as error:
        logger.error("%s: could not move the old map back (%s); it is in %s: rename it back",
                     folder, error.strerror or error, aside)


def _kill_point(stage: str) -> None:
    """Tests only: SIGKILL this process when :data:`KILL_POINT_ENV` is ``map:<stage>``."""
    if os.environ.get(KILL_POINT_ENV) == f"map:{stage}":
        os.kill(os.getpid(), signal.SIGKILL)


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
            f"{path}: map format version {version!r}, this softloc reads {FORMAT_VERSION} "
            f"(version 2 added the checksums of every file); {_REBUILD}"
        )
    required = ("model", "dim", "count", "dtype", "descriptors_sha256", "created", "files")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise MapError(f"{path}: missing key(s) {', '.join(missing)}; {_REBUILD}")
    return manifest
