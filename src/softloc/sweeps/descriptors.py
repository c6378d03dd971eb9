"""Raw pooled descriptors of one model, computed once per sweep folder and reused.

A sweep over the whitening size or the reference spacing changes nothing the network sees,
so the images of the fit set, the references and the queries are described once (the model's
output *before* its own PCA-whitening, L2-normalised) and cached as ``.npy`` beside a small
JSON manifest. The cache is reused when the manifest names the same model weights (SHA-256
from the checkpoint sidecar) and the same images; anything else recomputes it.

Files in the cache folder::

    raw_descriptors.npy      (N, D) float32, one row per image of rows.npy
    raw_rows.npy             (N,) int64 rows of the places table (fit, references, queries)
    raw_descriptors.json     manifest, written last: model, weights hash, image list hash
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softloc import distributed
from softloc.atomic import write_json, write_with
from softloc.data.places import PlaceTable
from softloc.evaluation.whitening import EvaluationSets, WhiteningProtocol, evaluation_sets
from softloc.extract import extract_over_ranks, image_store
from softloc.models import load_model

logger = logging.getLogger(__name__)

CACHE_DESCRIPTORS = "raw_descriptors.npy"
CACHE_ROWS = "raw_rows.npy"
CACHE_MANIFEST = "raw_descriptors.json"


@dataclass(frozen=True)
class RawDescriptors:
    """Raw pooled descriptors of the three evaluation sets (row i for ``sets.<name>[i]``)."""

    sets: EvaluationSets
    fit: np.ndarray
    references: np.ndarray
    queries: np.ndarray

    @property
    def dim(self) -> int:
        """D, the raw descriptor size."""
        return int(self.references.shape[1])


def _images_digest(places: PlaceTable, rows: np.ndarray) -> str:
    """SHA-256 of the image paths of ``rows`` (in order): which images were described."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(str(places.image_path(int(row))).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _weights_digest(model_path: Path) -> str:
    """The weights hash the checkpoint sidecar records (or the file's own hash)."""
    sidecar = model_path.with_suffix(".json")
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError):
        recorded = None
    if recorded:
        return str(recorded)
    return hashlib.sha256(model_path.read_bytes()).hexdigest()


def _load_cache(folder: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Cached (rows, descriptors) if the manifest matches exactly, else None."""
    try:
        stored = json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or {k: stored.get(k) for k in manifest} != manifest:
        logger.info("descriptor cache in %s is for other images or weights: recomputing", folder)
        return None
    try:
        rows = np.load(folder / CACHE_ROWS, allow_pickle=False)
        descriptors = np.load(folder / CACHE_DESCRIPTORS, allow_pickle=False)
    except (OSError, ValueError):
        logger.warning("descriptor cache in %s is unreadable: recomputing", folder)
        return None
    if descriptors.shape != (manifest["count"], stored.get("dim")) or len(rows) != len(descriptors):
        return None
    return rows, descriptors


def raw_model(model_path: str | os.PathLike[str]):
    """The model of ``model_path`` without its PCA-whitening (outputs the pooled descriptor)."""
    model, _ = load_model(model_path)
    model = copy.deepcopy(model)
    model.set_whitening(None)
    return model.eval()


def compute_raw_descriptors(
    model_path: str | os.PathLike[str],
    places: PlaceTable,
    sets: EvaluationSets,
    cache_dir: str | os.PathLike[str],
    batch_size: int = 64,
    progress: bool = True,
) -> RawDescriptors:
    """Raw descriptors of ``sets``' images, from the cache in ``cache_dir`` when it matches.

    Each image of fit, references and queries is described once (an image in two sets is
    not described twice); the network is not run at all on a cache hit. Under torchrun the
    images are split over the ranks and every rank gets them all back in row order
    (:func:`softloc.extract.extract_over_ranks`); rank 0 alone writes the cache.

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file; train one with softloc train")
    cache_dir = Path(cache_dir)
    rows = sets.all_rows()
    manifest = {
        "model": str(model_path.resolve()),
        "weights_sha256": _weights_digest(model_path),
        "images_sha256": _images_digest(places, rows),
        "count": int(len(rows)),
    }
    # Under torchrun rank 0 judges the cache and every rank follows its decision; the others
    # read it only once rank 0 has found it complete, and never write it.
    cached = _load_cache(cache_dir, manifest) if distributed.is_main() else None
    hit = cached is not None and np.array_equal(cached[0], rows)
    if distributed.main_decides(hit, "sweep descriptor cache"):
        cached = cached or _load_cache(cache_dir, manifest)
        if cached is None:
            raise distributed.DistributedError(
                f"rank {distributed.rank()}: {cache_dir}: rank 0 found the descriptor cache "
                "complete but this rank cannot read it; do all ranks see the same folder?")
        logger.info("reusing %d cached raw descriptors from %s", len(rows), cache_dir)
        descriptors = cached[1]
    else:
        model = raw_model(model_path)
        store = image_store(model, [places.image_path(int(i)) for i in rows])
        # each rank describes its block of whole batches; all get every row, in row order
        descriptors = extract_over_ranks(
            model, store, batch_size=batch_size, progress=progress, desc="raw descriptors"
        )
        if distributed.is_main():
            cache_dir.mkdir(parents=True, exist_ok=True)
            (cache_dir / CACHE_MANIFEST).unlink(missing_ok=True)  # stale until rewritten
            write_with(cache_dir / CACHE_DESCRIPTORS, lambda tmp: _save_npy(tmp, descriptors))
            write_with(cache_dir / CACHE_ROWS, lambda tmp: _save_npy(tmp, rows))
            write_json(cache_dir / CACHE_MANIFEST,
                       {**manifest, "dim": int(descriptors.shape[1])})
    position = {int(row): i for i, row in enumerate(rows)}

    def take(subset: np.ndarray) -> np.ndarray:
        return descriptors[[position[int(row)] for row in subset]]

    return RawDescriptors(
        sets=sets, fit=take(sets.fit), references=take(sets.references), queries=take(sets.queries)
    )


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


#: Sub-folder of a sweep folder that holds the descriptor cache.
CACHE_FOLDER = "descriptors"


def sweep_descriptors(
    model_path: str | os.PathLike[str],
    places: PlaceTable,
    out: str | os.PathLike[str],
    split: str = "test",
    reference_traversal: str = "reference",
    protocol: WhiteningProtocol | None = None,
    progress: bool = True,
) -> RawDescriptors:
    """The evaluation sets of ``split`` and their raw descriptors, cached in
    ``out/descriptors/`` (so a second sweep in the same folder runs no network)."""
    sets = evaluation_sets(places, split, reference_traversal, protocol)
    return compute_raw_descriptors(
        model_path, places, sets, Path(out) / CACHE_FOLDER, progress=progress
    )
