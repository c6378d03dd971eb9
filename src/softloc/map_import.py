"""A map from descriptors computed elsewhere: ``softloc map import``.

Another tool (hloc, a benchmark's synthetic generator, a cluster job) gives an ``.npy`` of (N, D)
descriptors and a places CSV of the N reference images, row i for row i. The map is built and
saved as ``softloc map build`` does (:meth:`softloc.mapping.Map.build`, :meth:`Map.save`: every
file listed with its size and SHA-256 in the manifest, written last), without a model: it can
be searched with descriptors (:meth:`Map.search`) but cannot describe images itself, so
``softloc localize`` and ``evaluate`` ask for a built map.

An ``.npy`` is never read whole: its rows are copied block by block (normalised on the way with
``--normalize``) into the new map's memory-mapped ``descriptors.npy``
(:func:`softloc.streamed_build.build_streamed`), so a map of 10 M references imports in
bounded memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from softloc.data.places import PlaceTable, read_places
from softloc.mapping import Map, MapError, check_map_target
from softloc.output_folders import claim_output_folder
from softloc.streamed_build import DescriptorWriter, build_streamed, copy_rows

CHUNK_ROWS = 65536


def read_descriptor_file(path: str | os.PathLike[str], normalize: bool = False) -> np.ndarray:
    """The (N, D) floating-point descriptors of an ``.npy`` file, memory-mapped when possible.

    Args:
        normalize: L2-normalise each row (read into memory, as float32); without it the rows
            must already have norm 1 (:meth:`Map.build` checks).

    Raises:
        MapError: missing file, not an ``.npy`` array, not 2-D, not floating point, or (with
            ``normalize``) a row of norm 0; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MapError(f"{path}: no such descriptor file; give an .npy array of shape (N, D)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise MapError(f"{path}: not a readable .npy array ({error}); save the descriptors "
                       "with numpy.save") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or 0 in array.shape:
        shape = getattr(array, "shape", None)
        raise MapError(f"{path}: descriptors must have shape (N, D) with N, D > 0, got {shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise MapError(f"{path}: descriptors must be floating point, got {array.dtype}; "
                       "save them as float32 or float16")
    if not normalize:
        return array
    out = np.empty(array.shape, dtype=np.float32)
    for start in range(0, len(array), CHUNK_ROWS):
        block = np.asarray(array[start:start + CHUNK_ROWS], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if zero.size:
            raise MapError(f"{path}: descriptor row {start + zero[0]} is all zeros; it cannot "
                           "be normalised: drop that reference or re-extract it")
        out[start:start + len(block)] = block / norms
    return out


def import_map(
    descriptors: str | os.PathLike[str],
    places: str | os.PathLike[str],
    out: str | os.PathLike[str],
    index_kind: str = "flat",
    index_options: dict[str, int] | None = None,
    dtype: str = "float32",
    normalize: bool = False,
    overwrite: bool = True,
) -> Path:
    """Save ``descriptors`` (.npy, row i for ``places`` row i) with their places as a map.

    ``out`` is claimed first, as by ``map build``; the images' paths stay relative to the places
    CSV's folder (the map's ``image_root``).

    Raises:
        MapError: bad descriptor file (:func:`read_descriptor_file`), a count that differs from
            the places', un-normalised or NaN rows, bad index options; nothing is written.
        PlacesError: a bad places CSV (named, with the row).
    """
    claim_output_folder(out, "map", allow=("dataset", "training run"))
    check_map_target(out, overwrite=overwrite)
    read_descriptor_file(descriptors)  # a bad file is named before the places are read
    table = read_places(places)
    return import_descriptor_file(descriptors, table, out, index_kind, index_options, dtype,
                                  normalize, overwrite, places)


def import_descriptor_file(
    descriptors: str | os.PathLike[str],
    table: PlaceTable,
    out: str | os.PathLike[str],
    index_kind: str = "flat",
    index_options: dict[str, int] | None = None,
    dtype: str = "float32",
    normalize: bool = False,
    overwrite: bool = True,
    places_name: str | os.PathLike[str] = "the places",
) -> Path:
    """Save the ``.npy`` ``descriptors`` (memory-mapped, copied block by block) with ``table``
    as a map (:func:`import_map` once the places are read; ``out`` must be claimed already).

    Raises:
        MapError: as :func:`import_map`; nothing is written under ``out``.
    """
    array = read_descriptor_file(descriptors)
    if len(array) != len(table):
        raise MapError(f"{descriptors}: {len(array)} descriptors but {places_name} has "
                       f"{len(table)} places; give one descriptor row per places row, in the "
                       "same order")
    meta = {"name": "imported", "source": os.path.abspath(descriptors)}

    def fill(writer: DescriptorWriter) -> None:
        copy_rows(array, writer, normalize=normalize, name=descriptors)

    try:
        return build_streamed(fill, table, meta, out, index_kind, index_options, dtype,
                              overwrite=overwrite, dim=array.shape[1])
    except MapError as error:
        message = str(error)
        raise MapError(message if message.startswith(str(descriptors))
                       else f"{descriptors}: {message}") from None


def save_imported(
    array: np.ndarray,
    table: PlaceTable,
    meta: dict,
    out: str | os.PathLike[str],
    source: str | os.PathLike[str],
    index_kind: str = "flat",
    index_options: dict[str, int] | None = None,
    dtype: str = "float32",
    overwrite: bool = True,
) -> Path:
    """Build and save a model-less map of ``array`` (row i for ``table`` row i); errors of the
    build name ``source``, the file the descriptors came from. Every importer ends here."""
    try:
        the_map = Map.build(array, table, meta, index_kind=index_kind, dtype=dtype,
                            index_options=index_options)
    except MapError as error:
        raise MapError(f"{source}: {error}") from None
    return the_map.save(out, overwrite=overwrite)
