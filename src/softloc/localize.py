"""Build a map from a trained model, and localize query images against it.

A map folder (see :mod:`softloc.mapping`) also holds a copy of the model that described its
references (``model.safetensors`` + ``model.json``), so localizing needs nothing but the map
folder and the query images. A query image that cannot be read (missing, a folder, undecodable,
over Pillow's decompression-bomb limit) is reported by :func:`localize_all` and the others are
still localized.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from softloc import distributed
from softloc.data.images import ImageError
from softloc.data.places import PlaceTable
from softloc.data.tuples import subsample_by_spacing
from softloc.extract import extract_descriptors, image_store
from softloc.mapping import MODEL_FILES, Map, MapError, check_map_target
from softloc.models import load_model
from softloc.output_folders import claim_output_folder
from softloc.streamed_build import build_streamed, fill_from_model

logger = logging.getLogger(__name__)

MAP_MODEL = MODEL_FILES[0]
#: File name endings taken as images when a folder is given to :func:`expand_image_arguments`.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Query images described at a time by :func:`localize_all`.
BATCH_SIZE = 64


def select_references(
    places: PlaceTable, split: str, traversal: str, spacing: float = 0.0
) -> PlaceTable:
    """Reference rows of one split and traversal, at least ``spacing`` metres apart."""
    refs = places.where(split=split, traversal=traversal)
    if len(refs) == 0:
        raise MapError(
            f"{places.root}: no images with split '{split}' and traversal '{traversal}'; "
            f"traversals here: {places.traversals()}"
        )
    order = np.argsort(refs.timestamp, kind="stable")
    refs = refs.subset(order)
    if spacing > 0:
        refs = refs.subset(subsample_by_spacing(refs.xy, spacing))
    return refs


def build_map(
    model_path: str | os.PathLike[str],
    places: PlaceTable,
    out: str | os.PathLike[str],
    split: str = "test",
    traversal: str = "reference",
    spacing: float = 0.0,
    index_kind: str = "flat",
    batch_size: int = 64,
    progress: bool = True,
    overwrite: bool = True,
    index_options: dict[str, int] | None = None,
    source: str | os.PathLike[str] | None = None,
    dtype: str = "float32",
) -> Path:
    """Describe the reference images with a model and save them as a map folder.

    ``out`` is claimed first (:func:`~softloc.output_folders.claim_output_folder`): it must be
    missing, empty or a map (it may hold map files only), and writable, so a mistyped ``--out``
    (a dataset, a training run) is refused before any work. The map, with a copy of the model,
    replaces an old one in one rename (:meth:`Map.save`).

    Args:
        model_path: a model file written by ``softloc train`` (``.safetensors``).
        places: the dataset's places.
        out: the map folder.
        split, traversal: which images are references.
        spacing: keep references at least this many metres apart along the drive.
        index_kind: FAISS index kind (``flat``, ``ivf``, ``ivfpq``).
        overwrite: replace a map already in ``out``.
        index_options: ``nlist``, ``nprobe``, ``m``, ``nbits`` of an IVF index (``hnsw_m``,
            ``ef_search`` of an HNSW one).
        source: the file recorded as the model's source (default ``model_path``; the
            published weights file when ``model_path`` was converted from it).
        dtype: storage of the descriptors, ``float32`` or ``float16``. They are written batch
            by batch into the map's memory-mapped file, never held whole
            (:mod:`softloc.streamed_build`).
    """
    # a map folder holds places.csv and model.* too, the markers of a dataset and a run
    claim_output_folder(out, "map", allow=("dataset", "training run"))
    check_map_target(out, overwrite=overwrite)
    model, _ = load_model(model_path)
    refs = select_references(places, split, traversal, spacing)
    store = image_store(model, [refs.image_path(i) for i in range(len(refs))])
    # under torchrun each rank describes its block; rank 0 alone writes, builds and saves
    if not distributed.is_main():  # another rank of a torchrun launch: describe, then wait
        fill_from_model(None, model, store, len(refs), batch_size, desc="map")
        distributed.barrier("map saved")
        return Path(os.path.abspath(out))
    meta = {**model.meta, "source": str(model_path if source is None else source)}
    model_files = {name: Path(model_path).with_suffix(Path(name).suffix) for name in MODEL_FILES}
    saved = build_streamed(
        lambda writer: fill_from_model(writer, model, store, len(refs), batch_size, progress,
                                       "map"),
        refs, meta, out, index_kind=index_kind, index_options=index_options, dtype=dtype,
        overwrite=overwrite, model_files=model_files)
    distributed.barrier("map saved")  # under torchrun: every rank returns once the map exists
    return saved


def load_map_model(map_dir: str | os.PathLike[str]) -> torch.nn.Module:
    """The model stored in a map folder."""
    path = Path(map_dir) / MAP_MODEL
    if not path.is_file():
        raise MapError(f"{path}: the map holds no model; rebuild it with `softloc map build`")
    model, _ = load_model(path)
    return model.eval()


@dataclass(frozen=True)
class QueryResult:
    """Where one query image is, with the top-k references behind the estimate (shown to
    people as a `softloc.localizer.Fix`, see `softloc.localize_output.fix_text`)."""

    image: Path
    x: float
    y: float
    yaw: float
    paths: list[str]
    positions: np.ndarray
    distances: np.ndarray
    rows: np.ndarray | None = None  # the references' rows in the map, best first



@dataclass(frozen=True)
class QueryFailure:
    """A query image that could not be localized, and why (the message names the file)."""

    image: Path
    reason: str

    def describe(self) -> str:
        """The reason, one line."""
        return self.reason


def expand_image_arguments(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The query images named by ``paths``: a folder stands for the images directly in it.

    A folder's images (names ending in :data:`IMAGE_SUFFIXES`, any case) are taken in name
    order; a folder without any is kept as it is, so that localizing it reports the problem.
    """
    expanded: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if found:
                logger.info("%s is a folder: localizing the %d images in it", path, len(found))
                expanded.extend(found)
                continue
        expanded.append(path)
    return expanded


def _not_an_image(path: Path) -> str | None:
    """Why ``path`` cannot be a query image before it is opened, or None."""
    if path.is_dir():
        return (f"{path}: is a folder holding no images ({', '.join(IMAGE_SUFFIXES)}); give "
                "image files, or a folder that holds them")
    if not path.exists():
        return f"{path}: image not found; check the path"
    return None


def _decode_error(path: Path, error: Exception) -> str:
    # the image loader turns decode failures, decompression bombs included, into ImageError
    return str(error) if isinstance(error, ImageError) else f"{path}: cannot read ({error})"


_IMAGE_ERRORS = (ImageError, OSError)


def localize_all(
    map_dir: str | os.PathLike[str] | Map,
    images: Sequence[str | os.PathLike[str]],
    k: int = 5,
) -> list[QueryResult | QueryFailure]:
    """Localize each image; a bad image is reported as a `QueryFailure` and the rest go on.

    ``map_dir`` is a map folder or a :class:`Map` already opened from one.

    Returns:
        One entry per image, in order: a `QueryResult` or a `QueryFailure`.

    Raises:
        MapError: the map (or its model) cannot be opened.
        ValueError: k < 1.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    the_map = map_dir if isinstance(map_dir, Map) else Map.load(map_dir)
    if the_map.folder is None:
        raise MapError("the map was built in memory and holds no model; save and open it")
    model = load_map_model(the_map.folder)
    paths = [Path(p) for p in images]
    outcomes: list[QueryResult | QueryFailure | None] = [None] * len(paths)
    store = image_store(model, paths)
    candidates = []
    for row, path in enumerate(paths):
        reason = _not_an_image(path)
        if reason is None:
            candidates.append(row)
        else:
            outcomes[row] = QueryFailure(path, reason)
    described: dict[int, np.ndarray] = {}
    for start in range(0, len(candidates), BATCH_SIZE):
        rows = candidates[start : start + BATCH_SIZE]
        try:
            described.update(zip(rows, extract_descriptors(model, store, rows), strict=True))
            continue
        except _IMAGE_ERRORS:
            pass
        for row in rows:  # a bad image in the batch: describe its images one by one
            try:
                described[row] = extract_descriptors(model, store, [row])[0]
            except _IMAGE_ERRORS as error:
                outcomes[row] = QueryFailure(paths[row], _decode_error(paths[row], error))
    if described:
        rows = sorted(described)
        found = the_map.localize(np.stack([described[r] for r in rows]), k=k)
        for row, hit in zip(rows, found, strict=True):
            outcomes[row] = QueryResult(
                image=paths[row],
                x=hit.x,
                y=hit.y,
                yaw=hit.yaw,
                paths=[str(p) for p in hit.paths],
                positions=the_map.places.xy[hit.indices],
                distances=np.asarray(hit.distances),
                rows=np.asarray(hit.indices),
            )
    return [outcome for outcome in outcomes if outcome is not None]


def localize_images(
    map_dir: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]], k: int = 5
) -> list[QueryResult]:
    """Estimate the position of each image: the position of its top-1 reference.

    Raises:
        ImageError: the first image that cannot be read (see :func:`localize_all` to go on).
    """
    results = []
    for outcome in localize_all(map_dir, images, k=k):
        if isinstance(outcome, QueryFailure):
            raise ImageError(outcome.reason)
        results.append(outcome)
    return results
