"""Maps larger than memory: descriptors streamed into the map's memory-mapped file.

A map of 10 million 256-d references holds 10 GB of float32 (5 GB of float16) descriptors.
:func:`build_streamed` never holds them: the caller's ``fill`` writes blocks of rows (extraction
batches, blocks of an ``.npy``) through a :class:`DescriptorWriter` straight into
``descriptors.npy`` of the map's hidden build folder (:func:`softloc.mapping.new_staging`),
a ``numpy.lib.format.open_memmap`` of the final size and dtype (float16 optional). The map is
then built over that memmap (:meth:`Map.build`: norms checked, the IVF cells trained on a
seeded sample and the index filled block by block) and saved by renaming the build folder into
place (:meth:`Map.save` with ``staging``), the manifest's SHA-256 computed by reading each file
in blocks. A kill or an error at any moment leaves no folder under the map's name that was not
there before (a build folder of a dead process is removed by the next save or load).

Memory: one block of rows, the training sample (at most 256 rows a cell) and what the FAISS
index itself holds: codes for ``ivfpq`` (``m`` bytes a reference), but float32 vectors for
``flat``, ``ivf`` and ``hnsw`` (4 D bytes a reference, plus the graph for ``hnsw``).

Under torchrun (:func:`fill_from_model`) each rank describes its block of whole batches, as
for every extraction (:func:`softloc.distributed.shard_rows`); the ranks then hand their j-th
batches to rank 0 together (:func:`softloc.distributed.gather_rows`), which writes each at its
own rows. The file therefore equals a single process's byte for byte whatever N, and rank 0
holds N batches at a time, never the map.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from softloc.data.places import PlaceTable
from softloc.mapping import (
    DESCRIPTORS_FILE,
    DTYPES,
    Map,
    MapError,
    check_map_target,
    new_staging,
    recover_interrupted_save,
)

if TYPE_CHECKING:  # torch is imported by fill_from_model only: `map import` never needs it
    import torch

logger = logging.getLogger(__name__)

#: Rows copied at a time from a descriptor file by :func:`copy_rows`.
CHUNK_ROWS = 65536


class DescriptorWriter:
    """(count, dim) descriptors written block by block into a memory-mapped ``.npy``.

    The file is created with its final shape and dtype on the first block (so the dimension
    may come from the data); blocks are converted to the file's dtype as they are written.
    :meth:`finish` checks that every row was written and gives the file back read-only.

    Args:
        path: the ``.npy`` to create (in a map's build folder).
        count: number of rows.
        dtype: ``float32`` or ``float16``.
        dim: the dimension, if known before the first block.
    """

    def __init__(self, path: Path, count: int, dtype: str = "float32",
                 dim: int | None = None) -> None:
        if dtype not in DTYPES:
            raise MapError(f"unknown descriptor dtype {dtype!r}; choose one of {DTYPES}")
        if count < 1:
            raise MapError("a map needs at least one reference descriptor")
        self.path = Path(path)
        self.count = int(count)
        self.dtype = np.dtype(dtype)
        self._array: np.memmap | None = None
        self._written = 0
        if dim is not None:
            self._open(int(dim))

    def _open(self, dim: int) -> np.memmap:
        if dim < 1:
            raise MapError(f"descriptors must have D > 0 columns, got {dim}")
        self._array = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                                shape=(self.count, dim))
        return self._array

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write (B, D) ``rows`` as rows ``start .. start + B - 1``."""
        rows = np.asarray(rows)
        if rows.ndim != 2:
            raise MapError(f"descriptor blocks must be (B, D), got shape {rows.shape}")
        array = self._array if self._array is not None else self._open(rows.shape[1])
        if rows.shape[1] != array.shape[1]:
            raise MapError(f"descriptor block of {rows.shape[1]} columns, the map has "
                           f"{array.shape[1]}")
        if start < 0 or start + len(rows) > self.count:
            raise MapError(f"rows {start}..{start + len(rows) - 1} lie outside the "
                           f"{self.count} references")
        array[start:start + len(rows)] = rows
        self._written += len(rows)

    def finish(self) -> np.memmap:
        """The written file, flushed and reopened read-only.

        Raises:
            MapError: fewer (or more) rows were written than the map has.
        """
        if self._array is None or self._written != self.count:
            raise MapError(f"{self.path}: {self._written} descriptor rows written, the map has "
                           f"{self.count}")
        self._array.flush()
        del self._array
        self._array = None
        return np.load(self.path, mmap_mode="r", allow_pickle=False)


def build_streamed(
    fill: Callable[[DescriptorWriter], None],
    places: PlaceTable,
    model_meta: dict[str, Any],
    out: str | os.PathLike[str],
    index_kind: str = "flat",
    index_options: dict[str, int] | None = None,
    dtype: str = "float32",
    overwrite: bool = True,
    model_files: Mapping[str, str | os.PathLike[str]] | None = None,
    seed: int = 0,
    dim: int | None = None,
) -> Path:
    """Build and save the map of ``places`` whose descriptors ``fill`` writes; returns ``out``.

    Args:
        fill: called once with a :class:`DescriptorWriter` of ``len(places)`` rows; it must
            write every row (row i describing ``places`` row i).
        places, model_meta, index_kind, index_options, seed: as :meth:`Map.build`.
        out, overwrite, model_files: as :meth:`Map.save`.
        dtype: storage of ``descriptors.npy``, ``float32`` or ``float16``.
        dim: descriptor dimension, if known before the first block.

    Raises:
        MapError: as :meth:`Map.build` and :meth:`Map.save`; nothing is left under ``out``
            that was not there before.
    """
    out = Path(os.path.abspath(out))
    recover_interrupted_save(out)
    check_map_target(out, overwrite=overwrite)
    try:
        staging = new_staging(out)
    except OSError as error:
        raise MapError(f"{error.filename or out}: cannot write the map "
                       f"({error.strerror or error}); choose a writable --out") from error
    try:
        writer = DescriptorWriter(staging / DESCRIPTORS_FILE, len(places), dtype, dim)
        fill(writer)
        descriptors = writer.finish()
        the_map = Map.build(descriptors, places, model_meta, index_kind=index_kind, dtype=dtype,
                            index_options=index_options, seed=seed)
        return the_map.save(out, overwrite=overwrite, model_files=model_files,
                            staging=staging)
    except OSError as error:
        raise MapError(f"{error.filename or staging}: cannot write the map "
                       f"({error.strerror or error}); nothing was replaced. Free space on "
                       "that disk or choose a writable --out") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed into place


def copy_rows(source: np.ndarray, writer: DescriptorWriter, normalize: bool = False,
              name: str | os.PathLike[str] = "descriptors") -> None:
    """Write every row of ``source`` (a memmap of an ``.npy``) through ``writer``, a block of
    :data:`CHUNK_ROWS` rows at a time, L2-normalised first with ``normalize``.

    Raises:
        MapError: (with ``normalize``) a row of norm 0, naming ``name`` and the row.
    """
    for start in range(0, len(source), CHUNK_ROWS):
        block = np.asarray(source[start:start + CHUNK_ROWS], dtype=np.float32)
        if normalize:
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            zero = np.flatnonzero(norms[:, 0] == 0)
            if zero.size:
                raise MapError(f"{name}: descriptor row {start + zero[0]} is all zeros; it "
                               "cannot be normalised: drop that reference or re-extract it")
            block = block / norms
        writer.write(start, block)


def fill_from_model(
    writer: DescriptorWriter | None,
    model: torch.nn.Module,
    store: Any,
    count: int,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "map",
) -> None:
    """Describe the ``count`` images of ``store`` and write them through ``writer``.

    In one process the batches are written as they come. Under torchrun every rank calls this
    (rank 0 with the writer, the others with None): each describes its block, and in round j
    the ranks' j-th batches are gathered on rank 0, which writes each at its rows.
    """
    import torch

    from softloc import distributed
    from softloc.extract import iter_descriptor_batches

    rows = np.arange(count)
    if distributed.world_size() == 1:
        start = 0
        for batch in iter_descriptor_batches(model, store, rows, batch_size, progress, desc):
            writer.write(start, batch)
            start += len(batch)
        return
    device = next(model.parameters(), torch.empty(0)).device
    distributed.init_process_group(device)
    ranks = distributed.world_size()
    blocks = [distributed.shard_rows(rows, batch_size, ranks, r) for r in range(ranks)]
    firsts = np.cumsum([0] + [len(b) for b in blocks])
    rounds = max(-(-len(b) // batch_size) for b in blocks)
    dim = int(getattr(model, "out_dim", 0))
    batches = iter_descriptor_batches(model, store, blocks[distributed.rank()], batch_size,
                                      progress and distributed.is_main(), desc)
    for j in range(rounds):
        local = next(batches, None)
        if local is None:  # this rank's block has fewer batches: it sends no rows
            local = np.zeros((0, dim), dtype=np.float32)
        dim = local.shape[1]  # the width of the rows (the model's out_dim before any)
        gathered = distributed.gather_rows(local, step=desc, device=device, main_only=True)
        if gathered is None:
            continue
        at = 0
        for r, block in enumerate(blocks):
            size = int(np.clip(len(block) - j * batch_size, 0, batch_size))
            writer.write(int(firsts[r]) + j * batch_size, gathered[at:at + size])
            at += size
